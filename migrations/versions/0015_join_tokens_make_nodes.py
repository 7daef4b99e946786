"""join tokens make nodes: a credential that only creates nodes for its owner, and which one made each node

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'join_tokens',
        sa.Column('id', ID, nullable=False),
        sa.Column('owner_id', ID, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_join_tokens_owner_id_users'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_join_tokens')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_join_tokens_token_hash')),
    )
    with op.batch_alter_table('join_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_join_tokens_owner_id'), ['owner_id'], unique=False)

    # On SQLite this copies nodes; env.py turns foreign keys off meanwhile, so what refers to them stays.
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('join_token_id', ID, nullable=True))
        batch_op.create_index(batch_op.f('ix_nodes_join_token_id'), ['join_token_id'], unique=False)
        batch_op.create_foreign_key(
            batch_op.f('fk_nodes_join_token_id_join_tokens'), 'join_tokens', ['join_token_id'], ['id'], ondelete='SET NULL'
        )


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_nodes_join_token_id_join_tokens'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_nodes_join_token_id'))
        batch_op.drop_column('join_token_id')

    with op.batch_alter_table('join_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_join_tokens_owner_id'))

    op.drop_table('join_tokens')
