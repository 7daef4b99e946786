"""Endpoints: the URLs at which the exposed ports of a running service are served, and the
gateways that serve them."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models.base import Base, state_column
from scheduler.models.jobs import Attempt, Op
from scheduler.states import utcnow


class Health(str, enum.Enum):
    """How an endpoint's health checks stand, as its node last reported (protocol PORT_HEALTH)."""

    STARTING = "starting"  # set when its container (re)starts; no check has passed since
    HEALTHY = "healthy"  # set when every check of its port passed
    UNHEALTHY = "unhealthy"  # set when a continuous check failed after they had passed


class Endpoint(Base):
    """One exposed port of an op, open while an attempt of it is held by its node: the op's later
    attempts take the row over (scheduler.endpoints.open_endpoints), so its URL stays the same."""

    __tablename__ = "endpoints"
    __table_args__ = (Index("ix_endpoints_attempt_id", "attempt_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"))
    op_id: Mapped[int] = mapped_column(ForeignKey("ops.id", ondelete="CASCADE"), index=True)
    # The container port.
    port: Mapped[int]
    # The URL's first DNS label: random, lowercase, the op's port's for good (Op.endpoint_labels).
    label: Mapped[str] = mapped_column(String(32), unique=True)
    private: Mapped[bool] = mapped_column(default=False)
    # Set when the claim made it; closed_at when its attempt ended (scheduler.orchestration.end_attempt).
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]
    # What its node last reported of its health checks (scheduler.health), with the last failure's
    # sentence and when it was reported.
    health: Mapped[Health] = mapped_column(state_column(Health), default=Health.STARTING)
    health_detail: Mapped[str | None] = mapped_column(Text)
    health_at: Mapped[datetime | None]

    attempt: Mapped[Attempt] = relationship()
    op: Mapped[Op] = relationship()
    # The gateways that hold its node's forward of it now (each node tunnels to every live gateway).
    forwards: Mapped[list["EndpointForward"]] = relationship(back_populates="endpoint", passive_deletes=True)


class Gateway(Base):
    """A gateway process, as it announced itself when it started: where workers reach its SSH
    server, and the host key they pin. It renews a lease while it runs; one whose lease has run out
    (killed, or cut off from the store) is not handed to workers and its forwards do not count."""

    __tablename__ = "gateways"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # host:port workers dial.
    ssh_address: Mapped[str] = mapped_column(String(255))
    # Its public host key, in OpenSSH's one-line form.
    host_key: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When it last renewed its lease, and until when that lease runs; None once it has stopped.
    seen_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]

    def live(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at > now


class EndpointForward(Base):
    """One gateway holding one endpoint's forward: made when the gateway accepts the node's
    forward, removed when that forward goes, the endpoint closes or the gateway stops."""

    __tablename__ = "endpoint_forwards"
    __table_args__ = (Index("ix_endpoint_forwards_gateway_id", "gateway_id"),)

    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True)
    gateway_id: Mapped[int] = mapped_column(ForeignKey("gateways.id", ondelete="CASCADE"), primary_key=True)
    forwarded_at: Mapped[datetime] = mapped_column(default=utcnow)

    endpoint: Mapped[Endpoint] = relationship(back_populates="forwards")
    gateway: Mapped[Gateway] = relationship()
