"""service workflows: each op keeps its endpoints' labels, and a node says whether it can serve endpoints

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('endpoint_labels', sa.JSON(), nullable=True))
    # On SQLite this copies nodes; env.py turns foreign keys off meanwhile, so what refers to them stays.
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serves_endpoints', sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('serves_endpoints')
    with op.batch_alter_table('ops', schema=None) as batch_op:
        batch_op.drop_column('endpoint_labels')
