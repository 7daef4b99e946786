"""ops no longer list the ops of earlier groups: that order follows from groups and positions

Each op kept `after`, every op of the groups before its own: for a job of n ungrouped ops that is
n²/2 keys stored, and read on every step of the job. The order is derived from the ops' groups
and positions instead (scheduler.jobdef.group_ranks), as it was computed for `after` in the first place.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE … DROP COLUMN (SQLite 3.35 and later have it): batch mode would copy the
    # table, and dropping the old one with foreign keys on would delete what refers to its rows.
    op.drop_column('ops', 'after')


def downgrade() -> None:
    op.add_column('ops', sa.Column('after', sa.JSON(), nullable=False, server_default='[]'))
    # What the older code reads to keep groups in order, rebuilt for every op as it was made.
    conn = op.get_bind()
    ops = sa.table('ops', sa.column('id'), sa.column('job_id'), sa.column('key'), sa.column('position'),
                   sa.column('group'), sa.column('after', sa.JSON()))
    rows = conn.execute(sa.select(ops.c.id, ops.c.job_id, ops.c.key, ops.c.group).order_by(ops.c.job_id, ops.c.position))
    jobs: dict[int, list] = {}
    for row in rows:
        jobs.setdefault(row.job_id, []).append(row)
    for members in jobs.values():
        first: dict = {}  # group (or the op, when it has none) → its place in the order
        rank = {row.key: first.setdefault(("group", row.group) if row.group is not None else ("op", row.key), len(first))
                for row in members}
        for row in members:
            earlier = [other.key for other in members if rank[other.key] < rank[row.key]]
            if earlier:
                conn.execute(ops.update().where(ops.c.id == row.id).values(after=earlier))
