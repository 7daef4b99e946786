"""service health and restarts: each endpoint's health as its node reports it, each attempt's restarts and since when it is ready

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

TIME = scheduler.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('health', sa.String(length=16), nullable=False, server_default='starting'))
        batch_op.add_column(sa.Column('health_detail', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('health_at', TIME, nullable=True))
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('restarts', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('restarting', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('ready_at', TIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_column('ready_at')
        batch_op.drop_column('restarting')
        batch_op.drop_column('restarts')
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_column('health_at')
        batch_op.drop_column('health_detail')
        batch_op.drop_column('health')
