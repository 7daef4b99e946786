"""placement and order: where the scheduler placed each waiting attempt and why one waits, job priorities,
arrays of jobs, admins' quotas and each person's decayed use

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models.base

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

TIME = scheduler.models.base.UTCDateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'job_arrays',
        sa.Column('id', ID, nullable=False),
        sa.Column('owner_id', ID, nullable=False),
        sa.Column('size', ID, nullable=False),
        sa.Column('max_running', ID, nullable=True),
        sa.Column('created_at', TIME, nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_job_arrays_owner_id_users'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_job_arrays')),
    )
    op.create_index(op.f('ix_job_arrays_owner_id'), 'job_arrays', ['owner_id'], unique=False)
    op.create_table(
        'quotas',
        sa.Column('id', ID, nullable=False),
        sa.Column('user_id', ID, nullable=False),
        sa.Column('market_id', ID, nullable=True),
        sa.Column('max_running_gpus', ID, nullable=True),
        sa.Column('max_waiting_jobs', ID, nullable=True),
        sa.Column('updated_at', TIME, nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_quotas_user_id_users'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['market_id'], ['markets.id'], name=op.f('fk_quotas_market_id_markets'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_quotas')),
    )
    op.create_index('uq_quotas_user_id_market_id', 'quotas', ['user_id', 'market_id'], unique=True)
    op.create_table(
        'usage',
        sa.Column('user_id', ID, nullable=False),
        sa.Column('gpu_ms', ID, nullable=False),
        sa.Column('as_of', TIME, nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_usage_user_id_users'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id', name=op.f('pk_usage')),
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_priority', ID, nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', ID, nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('array_id', ID, nullable=True))
        batch_op.add_column(sa.Column('array_index', ID, nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_array_id'), ['array_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_array_id_job_arrays'), 'job_arrays', ['array_id'], ['id'],
                                    ondelete='CASCADE')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('placed_node_id', ID, nullable=True))
        batch_op.add_column(sa.Column('placed_gpus', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('placed_at', TIME, nullable=True))
        batch_op.add_column(sa.Column('pinned_node_id', ID, nullable=True))
        batch_op.add_column(sa.Column('waiting', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('line_position', ID, nullable=True))
        batch_op.add_column(sa.Column('reserved_node_id', ID, nullable=True))
        batch_op.add_column(sa.Column('reserved_from', TIME, nullable=True))
        batch_op.create_index(batch_op.f('ix_attempts_placed_node_id'), ['placed_node_id'], unique=False)
        batch_op.create_index('ix_attempts_state_line_position', ['state', 'line_position'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_attempts_placed_node_id_nodes'), 'nodes', ['placed_node_id'], ['id'],
                                    ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_attempts_reserved_node_id_nodes'), 'nodes', ['reserved_node_id'],
                                    ['id'], ondelete='SET NULL')
        batch_op.create_foreign_key(batch_op.f('fk_attempts_pinned_node_id_nodes'), 'nodes', ['pinned_node_id'],
                                    ['id'], ondelete='SET NULL')
    with op.batch_alter_table('ops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('exposes', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Services made before: they expose ports.
    op.execute("UPDATE ops SET exposes = " + ("1" if op.get_bind().dialect.name == "sqlite" else "true")
               + " WHERE endpoint_labels IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('ops', schema=None) as batch_op:
        batch_op.drop_column('exposes')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_attempts_pinned_node_id_nodes'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_attempts_reserved_node_id_nodes'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_attempts_placed_node_id_nodes'), type_='foreignkey')
        batch_op.drop_index('ix_attempts_state_line_position')
        batch_op.drop_index(batch_op.f('ix_attempts_placed_node_id'))
        for column in ('reserved_from', 'reserved_node_id', 'line_position', 'waiting', 'pinned_node_id', 'placed_at', 'placed_gpus',
                       'placed_node_id'):
            batch_op.drop_column(column)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_array_id_job_arrays'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_array_id'))
        for column in ('array_index', 'array_id', 'priority'):
            batch_op.drop_column(column)
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('max_priority')
    op.drop_table('usage')
    op.drop_index('uq_quotas_user_id_market_id', table_name='quotas')
    op.drop_table('quotas')
    op.drop_index(op.f('ix_job_arrays_owner_id'), table_name='job_arrays')
    op.drop_table('job_arrays')
