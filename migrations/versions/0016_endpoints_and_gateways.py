"""endpoints and gateways: the URLs of a running service's exposed ports, and the gateways serving them

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TIME = scheduler.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'endpoints',
        sa.Column('id', ID, nullable=False),
        sa.Column('attempt_id', ID, nullable=False),
        sa.Column('op_id', ID, nullable=False),
        sa.Column('port', ID, nullable=False),
        sa.Column('label', sa.String(length=32), nullable=False),
        sa.Column('private', sa.Boolean(), nullable=False),
        sa.Column('opened_at', TIME, nullable=False),
        sa.Column('closed_at', TIME, nullable=True),
        sa.Column('forwarded_by', sa.String(length=100), nullable=True),
        sa.Column('forwarded_at', TIME, nullable=True),
        sa.ForeignKeyConstraint(['attempt_id'], ['attempts.id'], name=op.f('fk_endpoints_attempt_id_attempts'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['op_id'], ['ops.id'], name=op.f('fk_endpoints_op_id_ops'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_endpoints')),
        sa.UniqueConstraint('label', name=op.f('uq_endpoints_label')),
    )
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.create_index('ix_endpoints_attempt_id', ['attempt_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_endpoints_op_id'), ['op_id'], unique=False)

    op.create_table(
        'gateways',
        sa.Column('id', ID, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('ssh_address', sa.String(length=255), nullable=False),
        sa.Column('host_key', sa.Text(), nullable=False),
        sa.Column('started_at', TIME, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gateways')),
        sa.UniqueConstraint('name', name=op.f('uq_gateways_name')),
    )


def downgrade() -> None:
    op.drop_table('gateways')
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_endpoints_op_id'))
        batch_op.drop_index('ix_endpoints_attempt_id')
    op.drop_table('endpoints')
