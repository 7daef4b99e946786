"""Errors raised by the peergrid core."""

from __future__ import annotations

from dataclasses import dataclass


class PeergridError(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigurationError(PeergridError):
    """Raised when a setting is missing or cannot be read."""


class NotFound(PeergridError):
    """Raised when a row does not exist or belongs to someone else."""


class IllegalTransition(PeergridError):
    """Raised when a state change is not allowed from the current state."""


class Conflict(PeergridError):
    """Raised when a request loses a race or refers to work no longer the caller's."""


class AuthenticationError(PeergridError):
    """Raised when credentials are missing or wrong."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job definition, at a JSON path."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidDefinition(PeergridError):
    """Raised when a job definition has one or more problems; carries all of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class Banned(PeergridError):
    """Raised when a banned node calls the node API."""


class NoMarket(PeergridError):
    """Raised when no market can serve an op."""


class SecretMissing(PeergridError):
    """Raised when an op is about to run and its job's owner no longer has a secret it names."""


class QuotaExceeded(PeergridError):
    """Raised when a submit would leave more of a person's jobs waiting than an admin's quota allows."""

    def __init__(self, message: str, *, market: str | None, max_waiting_jobs: int, waiting: int, adding: int):
        super().__init__(message)
        self.market = market
        self.max_waiting_jobs = max_waiting_jobs
        self.waiting = waiting
        self.adding = adding


class PriorityRefused(PeergridError):
    """Raised when a submit asks for a priority that is not a whole number or lies outside what its owner may ask."""
