"""attempts by finish time, for the utilisation chart

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_attempts_finished_at', 'attempts', ['finished_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_attempts_finished_at', table_name='attempts')
