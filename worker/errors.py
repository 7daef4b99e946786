"""Errors of the worker agent."""

from __future__ import annotations


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
