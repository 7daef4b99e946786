"""every attempt has an offer time: it is staged for publishing when it is made

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from scheduler.models.base import UTCDateTime


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE attempts SET offered_at = created_at WHERE offered_at IS NULL")
    with op.batch_alter_table('attempts') as batch:
        batch.alter_column('offered_at', existing_type=UTCDateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.alter_column('offered_at', existing_type=UTCDateTime(timezone=True), nullable=True)
