"""a cluster knows who it is: the id its workers label what they make on a shared Docker engine with

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The row is made on first use (scheduler.nodes.cluster_id), not here, so that stores copied
    # from one migrated template (as the tests make theirs) are still clusters of their own.
    op.create_table(
        'cluster',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('uid', sa.String(length=32), nullable=False),
        sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cluster')),
        sa.UniqueConstraint('uid', name=op.f('uq_cluster_uid')),
    )


def downgrade() -> None:
    op.drop_table('cluster')
