"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-21
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import scheduler.models.base


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('markets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('queue', sa.String(length=100), nullable=False),
    sa.Column('gpu_count', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('min_vram_mb', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('gpu_models', sa.JSON(), nullable=False),
    sa.Column('min_compute_capability', sa.String(length=16), nullable=True),
    sa.Column('min_cuda_version', sa.String(length=16), nullable=True),
    sa.Column('price_per_second', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('fee_ppm', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('max_timeout_s', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_markets')),
    sa.UniqueConstraint('queue', name=op.f('uq_markets_queue')),
    sa.UniqueConstraint('slug', name=op.f('uq_markets_slug'))
    )
    op.create_table('users',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='jobstate', native_enum=False, length=16), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('max_cost', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('cost', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_jobs_owner_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_owner_id_id', ['owner_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_state'), ['state'], unique=False)

    op.create_table('nodes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('owner_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('state', sa.Enum('online', 'busy', 'draining', 'offline', name='nodestate', native_enum=False, length=16), nullable=False),
    sa.Column('simulated', sa.Boolean(), nullable=False),
    sa.Column('gpu_message', sa.String(length=500), nullable=True),
    sa.Column('agent_version', sa.String(length=50), nullable=True),
    sa.Column('hostname', sa.String(length=255), nullable=True),
    sa.Column('cpu_count', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('memory_mb', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('slots', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('registered_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_heartbeat_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_nodes_owner_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_nodes')),
    sa.UniqueConstraint('owner_id', 'name', name=op.f('uq_nodes_owner_id')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_nodes_token_hash'))
    )
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nodes_owner_id'), ['owner_id'], unique=False)

    op.create_table('node_gpus',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('node_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('index', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('uuid', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('memory_total_mb', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('memory_free_mb', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('compute_capability', sa.String(length=16), nullable=True),
    sa.Column('driver_version', sa.String(length=32), nullable=True),
    sa.Column('cuda_version', sa.String(length=16), nullable=True),
    sa.Column('utilization_pct', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('temperature_c', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_node_gpus_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_node_gpus')),
    sa.UniqueConstraint('node_id', 'uuid', name=op.f('uq_node_gpus_node_id'))
    )
    with op.batch_alter_table('node_gpus', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_node_gpus_node_id'), ['node_id'], unique=False)

    op.create_table('ops',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('position', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('type', sa.String(length=50), nullable=False),
    sa.Column('group', sa.String(length=200), nullable=True),
    sa.Column('depends_on', sa.JSON(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('market_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.Enum('pending', 'queued', 'running', 'succeeded', 'failed', 'skipped', 'cancelled', name='opstate', native_enum=False, length=16), nullable=False),
    sa.Column('timeout_s', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('max_attempts', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('exit_code', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('results', sa.JSON(), nullable=True),
    sa.Column('started_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_ops_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['market_id'], ['markets.id'], name=op.f('fk_ops_market_id_markets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ops')),
    sa.UniqueConstraint('job_id', 'key', name=op.f('uq_ops_job_id'))
    )
    with op.batch_alter_table('ops', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ops_job_id'), ['job_id'], unique=False)

    op.create_table('attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('op_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('number', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.Enum('queued', 'claimed', 'running', 'succeeded', 'failed', 'lost', 'cancelled', name='attemptstate', native_enum=False, length=16), nullable=False),
    sa.Column('node_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('gpus', sa.JSON(), nullable=False),
    sa.Column('created_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('offered_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('claimed_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('started_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('exit_code', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cost', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('last_log_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_attempts_node_id_nodes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['op_id'], ['ops.id'], name=op.f('fk_attempts_op_id_ops'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attempts')),
    sa.UniqueConstraint('op_id', 'number', name=op.f('uq_attempts_op_id'))
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attempts_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_attempts_op_id'), ['op_id'], unique=False)
        batch_op.create_index('ix_attempts_state_offered_at', ['state', 'offered_at'], unique=False)

    op.create_table('log_lines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('op_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('logged_at', scheduler.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['attempt_id'], ['attempts.id'], name=op.f('fk_log_lines_attempt_id_attempts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_log_lines_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['op_id'], ['ops.id'], name=op.f('fk_log_lines_op_id_ops'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_log_lines')),
    sa.UniqueConstraint('attempt_id', 'seq', name=op.f('uq_log_lines_attempt_id'))
    )
    with op.batch_alter_table('log_lines', schema=None) as batch_op:
        batch_op.create_index('ix_log_lines_job_id_id', ['job_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_log_lines_op_id'), ['op_id'], unique=False)

    markets = sa.table(
        "markets",
        sa.column("slug", sa.String), sa.column("name", sa.String), sa.column("queue", sa.String),
        sa.column("gpu_count", sa.Integer), sa.column("min_vram_mb", sa.Integer),
        sa.column("gpu_models", sa.JSON), sa.column("price_per_second", sa.Integer),
        sa.column("fee_ppm", sa.Integer), sa.column("max_timeout_s", sa.Integer),
        sa.column("created_at", scheduler.models.base.UTCDateTime),
    )
    # The market every machine can serve: 100 micro-credits per core-second, a 10% fee, 24 hours at most.
    op.bulk_insert(markets, [{
        "slug": "cpu", "name": "CPU", "queue": "market.cpu", "gpu_count": 0, "min_vram_mb": 0,
        "gpu_models": [], "price_per_second": 100, "fee_ppm": 100_000, "max_timeout_s": 86_400,
        "created_at": datetime.now(timezone.utc),
    }])


def downgrade() -> None:
    with op.batch_alter_table('log_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_log_lines_op_id'))
        batch_op.drop_index('ix_log_lines_job_id_id')

    op.drop_table('log_lines')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_state_offered_at')
        batch_op.drop_index(batch_op.f('ix_attempts_op_id'))
        batch_op.drop_index(batch_op.f('ix_attempts_node_id'))

    op.drop_table('attempts')
    with op.batch_alter_table('ops', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ops_job_id'))

    op.drop_table('ops')
    with op.batch_alter_table('node_gpus', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_node_gpus_node_id'))

    op.drop_table('node_gpus')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nodes_owner_id'))

    op.drop_table('nodes')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_state'))
        batch_op.drop_index('ix_jobs_owner_id_id')

    op.drop_table('jobs')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_id'))

    op.drop_table('api_tokens')
    op.drop_table('users')
    op.drop_table('markets')
