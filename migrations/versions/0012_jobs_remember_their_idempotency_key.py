"""jobs remember the Idempotency-Key they were submitted with: one job per person and key

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE on every backend: adding nullable columns and an index copies nothing.
    op.add_column('jobs', sa.Column('idempotency_key', sa.String(length=255), nullable=True))
    op.add_column('jobs', sa.Column('request_digest', sa.String(length=64), nullable=True))
    op.create_index('uq_jobs_owner_id_idempotency_key', 'jobs', ['owner_id', 'idempotency_key'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_jobs_owner_id_idempotency_key', table_name='jobs')
    op.drop_column('jobs', 'request_digest')
    op.drop_column('jobs', 'idempotency_key')
