"""Providers' machines and the GPUs they report."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, false, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models.base import Base, state_column
from scheduler.states import NodeState, utcnow


class Node(Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[NodeState] = mapped_column(state_column(NodeState), default=NodeState.OFFLINE)
    # True when its GPUs come from --simulate-gpus rather than NVML.
    simulated: Mapped[bool] = mapped_column(default=False)
    # Why the node has no GPUs, as the probe said it ("NVML not found", ...).
    gpu_message: Mapped[str | None] = mapped_column(String(500))
    agent_version: Mapped[str | None] = mapped_column(String(50))
    hostname: Mapped[str | None] = mapped_column(String(255))
    cpu_count: Mapped[int] = mapped_column(default=0)
    memory_mb: Mapped[int] = mapped_column(default=0)
    # CPU ops it runs at once.
    slots: Mapped[int] = mapped_column(default=1)
    # Whether its containers have a network (not --job-network none), so it can serve endpoints.
    serves_endpoints: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    # Set when its owner removed it: its token no longer works and it is listed no more.
    removed_at: Mapped[datetime | None]
    # Set when an admin banned it: its token is refused and it takes no work.
    banned_at: Mapped[datetime | None]
    ban_reason: Mapped[str | None] = mapped_column(String(500))
    # Its owner asked it to drain: it stays draining through going offline and back, until undrained.
    drain_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The join token a worker made it with (scheduler.joining); None for a node made by its owner.
    join_token_id: Mapped[int | None] = mapped_column(ForeignKey("join_tokens.id", ondelete="SET NULL"), index=True)

    gpus: Mapped[list["NodeGpu"]] = relationship(
        back_populates="node", cascade="all, delete-orphan", order_by="NodeGpu.index"
    )

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.name} {self.state.value}>"


class NodeGpu(Base):
    __tablename__ = "node_gpus"
    __table_args__ = (UniqueConstraint("node_id", "uuid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    uuid: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    memory_total_mb: Mapped[int] = mapped_column(default=0)
    memory_free_mb: Mapped[int] = mapped_column(default=0)
    compute_capability: Mapped[str | None] = mapped_column(String(16))
    driver_version: Mapped[str | None] = mapped_column(String(32))
    cuda_version: Mapped[str | None] = mapped_column(String(16))
    utilization_pct: Mapped[int | None]
    temperature_c: Mapped[int | None]

    node: Mapped[Node] = relationship(back_populates="gpus")
