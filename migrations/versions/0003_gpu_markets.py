"""seed GPU markets

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import scheduler.models.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# slug, name, GPUs per op, minimum MB per GPU, micro-credits per GPU-second
GPU_MARKETS = [
    ("gpu", "1 GPU, any", 1, 0, 200),
    ("gpu-24gb", "1 GPU with 24 GB or more", 1, 24_000, 400),
    ("gpu-48gb", "1 GPU with 48 GB or more", 1, 48_000, 800),
    ("gpu-80gb", "1 GPU with 80 GB or more", 1, 80_000, 1_500),
    ("gpu-2x", "2 GPUs, any", 2, 0, 200),
    ("gpu-2x-24gb", "2 GPUs with 24 GB or more each", 2, 24_000, 400),
    ("gpu-4x", "4 GPUs, any", 4, 0, 200),
    ("gpu-4x-80gb", "4 GPUs with 80 GB or more each", 4, 80_000, 1_500),
]


def upgrade() -> None:
    markets = sa.table(
        "markets",
        sa.column("slug", sa.String), sa.column("name", sa.String), sa.column("queue", sa.String),
        sa.column("gpu_count", sa.Integer), sa.column("min_vram_mb", sa.Integer),
        sa.column("gpu_models", sa.JSON), sa.column("price_per_second", sa.Integer),
        sa.column("fee_ppm", sa.Integer), sa.column("max_timeout_s", sa.Integer),
        sa.column("created_at", scheduler.models.base.UTCDateTime),
    )
    now = datetime.now(timezone.utc)
    op.bulk_insert(markets, [
        {"slug": slug, "name": name, "queue": f"market.{slug}", "gpu_count": gpus, "min_vram_mb": vram,
         "gpu_models": [], "price_per_second": price, "fee_ppm": 100_000, "max_timeout_s": 86_400, "created_at": now}
        for slug, name, gpus, vram, price in GPU_MARKETS
    ])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM markets WHERE slug IN (%s)" % ", ".join(f"'{m[0]}'" for m in GPU_MARKETS)))
