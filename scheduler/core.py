"""The long-lived handles a server process holds: settings, the store, the offer publisher and its health file."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from protocol.liveness import Liveness
from scheduler import offers, placing
from scheduler.db import make_engine, make_sessionmaker
from scheduler.endpoints import ENDPOINT_DOMAIN
from scheduler.offers import OfferPublisher
from scheduler.ordering import FAIR_SHARE_HALF_LIFE
from scheduler.settings import Settings


@dataclass
class Core:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    publisher: OfferPublisher
    # The process's health file, which its long-lived loops beat (protocol.liveness).
    liveness: Liveness = field(default_factory=lambda: Liveness(None))

    @classmethod
    def from_settings(cls, settings: Settings) -> "Core":
        engine = make_engine(settings.database_url)
        # Endpoint URLs are resolved into ops' literals wherever a job advances: its sessions know the domain.
        sessions = make_sessionmaker(engine, info={
            ENDPOINT_DOMAIN: settings.endpoint_domain, FAIR_SHARE_HALF_LIFE: settings.fair_share_half_life_s,
        })
        return cls(settings, engine, sessions, OfferPublisher(settings.broker_url), Liveness(settings.health_file))

    def commit(self, session: Session) -> None:
        """Commit, then publish the offers the transaction staged and ask for the pass it wanted (never before)."""
        staged = offers.take_staged(session)
        wanted = placing.take_wanted(session)
        session.commit()
        self.publisher.publish(staged)
        if wanted:
            self.publisher.ask_for_pass()

    def rollback(self, session: Session) -> None:
        offers.discard_staged(session)
        placing.take_wanted(session)
        session.rollback()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work for a CLI command or task: commit and publish, or roll back."""
        session = self.sessions()
        try:
            yield session
            self.commit(session)
        except BaseException:
            self.rollback(session)
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.publisher.close()
        self.engine.dispose()
