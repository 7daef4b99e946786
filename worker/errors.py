"""Errors of the worker agent."""

from __future__ import annotations

from docker.errors import APIError


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class ServerError(WorkerError):
    """Raised when the server cannot be reached or answers with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AttemptGone(ServerError):
    """Raised when the server says an attempt is no longer this node's (409)."""


class RuntimeUnavailable(WorkerError):
    """Raised when the container engine cannot be reached."""


class ContainerFailed(WorkerError):
    """Raised when a container cannot be created or started; the message says why."""


def docker_reason(e: BaseException) -> str:
    """Say in a line what the engine (or docker-py) gave as the reason for an error."""
    if isinstance(e, APIError) and getattr(e, "explanation", None):
        return str(e.explanation)
    text = str(e)
    return text if len(text) < 300 else text[:300] + "…"
