"""gateways hold leases and share endpoints: a gateway renews a lease while it runs, and an
endpoint's forwards are one row per gateway holding one, in place of the single forwarded_by

Revision ID: 0018
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TIME = scheduler.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('gateways', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seen_at', TIME, nullable=True))
        batch_op.add_column(sa.Column('expires_at', TIME, nullable=True))

    op.create_table(
        'endpoint_forwards',
        sa.Column('endpoint_id', ID, nullable=False),
        sa.Column('gateway_id', ID, nullable=False),
        sa.Column('forwarded_at', TIME, nullable=False),
        sa.ForeignKeyConstraint(['endpoint_id'], ['endpoints.id'], name=op.f('fk_endpoint_forwards_endpoint_id_endpoints'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['gateway_id'], ['gateways.id'], name=op.f('fk_endpoint_forwards_gateway_id_gateways'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('endpoint_id', 'gateway_id', name=op.f('pk_endpoint_forwards')),
    )
    with op.batch_alter_table('endpoint_forwards', schema=None) as batch_op:
        batch_op.create_index('ix_endpoint_forwards_gateway_id', ['gateway_id'], unique=False)

    # What a running gateway held is forwarded again when it renews its lease and its nodes ask
    # again; the old marks are not carried over.
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_column('forwarded_by')
        batch_op.drop_column('forwarded_at')


def downgrade() -> None:
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('forwarded_at', TIME, nullable=True))
        batch_op.add_column(sa.Column('forwarded_by', sa.String(length=100), nullable=True))
    with op.batch_alter_table('endpoint_forwards', schema=None) as batch_op:
        batch_op.drop_index('ix_endpoint_forwards_gateway_id')
    op.drop_table('endpoint_forwards')
    with op.batch_alter_table('gateways', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
        batch_op.drop_column('seen_at')
