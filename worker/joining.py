"""How a worker comes by its node token: given, saved by an earlier join, or got by joining.

A worker given a join token instead of a node token joins once, as a new node named by --name
(the machine's hostname by default), and keeps the node token it got in its data dir; every later
start uses that saved token. It never joins again by itself: a saved token the server no longer
knows is an error that names the file to delete.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path

from protocol.messages import JoinRequest
from worker.client import join
from worker.errors import ServerError, WorkerError
from worker.outbox import write_atomically
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

TOKEN_FILE = "node-token"

NO_TOKEN = ("This worker has no node token: set PEERGRID_NODE_TOKEN to one (`peergrid node create NAME` prints it), "
            "or PEERGRID_JOIN_TOKEN to a join token (`peergrid node join-token`) to join as a new node.")


@dataclass(frozen=True)
class NodeToken:
    token: str = field(repr=False)
    # The file it was read from or saved to; None when it was given.
    saved_in: Path | None = None

    def refused(self, error: ServerError) -> WorkerError:
        """The error to stop with when the server refuses this token: naming the file to delete, when
        it was saved, and the server no longer knows it."""
        if self.saved_in is None or error.status != 401:
            return error
        return WorkerError(
            f"The server no longer knows the node token saved in {self.saved_in} ({error}); its node was "
            f"probably removed. Delete {self.saved_in} to join again as a new node."
        )


def token_file(data_dir: Path | None) -> Path | None:
    return data_dir / TOKEN_FILE if data_dir is not None else None


def saved_token(path: Path) -> str | None:
    """The node token an earlier join saved in path, if there is one."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise WorkerError(f"The saved node token {path} cannot be read ({e.strerror}); let this user read it, "
                          "or delete it to join again as a new node.") from e
    return token or None


def save_token(path: Path, token: str) -> None:
    """Keep a node token in path, readable by this user alone; a crash leaves no half-written file."""
    # mkstemp makes the file 0600 before anything is written to it.
    write_atomically(path.parent, path, (token + "\n").encode())


def node_token(settings: WorkerSettings, *, stopping: threading.Event) -> NodeToken | None:
    """The node token to work with: the one given, else the one saved by an earlier join, else a new
    one got by joining with the join token (waiting while the server is down or failing). None when
    stopping was set while waiting.

    Raises:
        WorkerError: there is neither token, the saved one cannot be read, or the server refuses to join.
    """
    if settings.token:
        return NodeToken(settings.token)
    path = token_file(settings.data_dir)
    saved = saved_token(path) if path is not None else None
    if saved:
        return NodeToken(saved, path)
    if not settings.join_token:
        raise WorkerError(NO_TOKEN)
    if path is None:
        raise WorkerError("Joining needs a data dir to keep the node token in (--data-dir, PEERGRID_WORKER_DATA_DIR).")
    _check_writable(path.parent)
    name = settings.name or platform.node()
    delay = 1.0
    while not stopping.is_set():
        try:
            joined = join(settings.server, settings.join_token, JoinRequest(name=name))
            break
        except ServerError as e:
            if e.status is not None and e.status < 500:
                raise WorkerError(f"Could not join as node {name!r}: {e}") from e
            log.warning("cannot join yet: %s", e)
        stopping.wait(delay)
        delay = min(delay * 2, 15)
    else:
        return None
    try:
        save_token(path, joined.token)
    except OSError as e:
        raise WorkerError(
            f"Joined as node {joined.node_name} ({joined.node_id}) but could not save its token in {path} ({e}); "
            "remove that node on the Nodes page, make the folder writable, and start the worker again."
        ) from e
    log.info("joined as node %s (%s)", joined.node_name, joined.node_id)
    return NodeToken(joined.token, path)


def _check_writable(folder: Path) -> None:
    """Refuse to join where the node token could not be kept, before a node is made."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise WorkerError(f"The worker's data dir {folder} cannot be made ({e.strerror}); give the worker one it "
                          "can write (--data-dir, PEERGRID_WORKER_DATA_DIR) to keep its node token in.") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WorkerError(f"The worker's data dir {folder} is not writable; give the worker one it can write "
                          "(--data-dir, PEERGRID_WORKER_DATA_DIR) to keep its node token in.")
