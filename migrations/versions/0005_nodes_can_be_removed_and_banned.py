"""nodes can be removed and banned

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('removed_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('banned_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('ban_reason', sa.String(length=500), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('ban_reason')
        batch_op.drop_column('banned_at')
        batch_op.drop_column('removed_at')

