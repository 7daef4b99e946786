"""Which image an op runs: pulled with its registry login, or found here when nobody's login made it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import docker
from docker.errors import DockerException, ImageNotFound

from worker.errors import ContainerFailed, WorkerError, docker_reason

log = logging.getLogger(__name__)

# Sent for an op without a login instead of nothing, which docker-py would fill in with the login of
# whoever runs the worker: a job must not borrow the provider's registry access.
ANONYMOUS: dict[str, str] = {}


class PrivateImages:
    """The images this node pulled with a registry login, by the reference an op named and the id it got.

    Kept in a file under the worker's data dir, locked across processes (workers sharing an engine may
    share it), so a restarted worker still knows what it must not hand out without a login.
    """

    def __init__(self, path: Path | None = None):
        self.path = path
        self._lock = threading.Lock()
        # Each {"ref", "id"}; id is None while the pull runs (or when a worker died during it).
        self._kept: list[dict] = []
        if path is not None:
            with self._records():
                pass  # an unreadable file stops the worker now, not an op later

    @contextmanager
    def _records(self, *, write: bool = False) -> Iterator[list[dict]]:
        with self._lock:
            if self.path is None:
                yield self._kept
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    records = json.loads(self.path.read_text())["images"] if self.path.exists() else []
                    yield records
                    if write:
                        temporary = self.path.with_name(self.path.name + ".new")
                        temporary.write_text(json.dumps({"images": records}, indent=1))
                        os.replace(temporary, self.path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise WorkerError(
                    f"The worker's list of private images at {self.path} cannot be used ({e}); "
                    "fix its permissions or contents. Removing it lets this node run images pulled with "
                    "someone's registry login for anyone."
                ) from e

    def pulling(self, ref: str) -> None:
        with self._records(write=True) as records:
            records.append({"ref": ref, "id": None})

    def pulled(self, ref: str, image_id: str | None) -> None:
        """Record what a pull with a login gave (None: it failed), in place of its pending entry."""
        with self._records(write=True) as records:
            pending = next((r for r in records if r == {"ref": ref, "id": None}), None)
            if pending is not None:
                records.remove(pending)
            if image_id is not None and {"ref": ref, "id": image_id} not in records:
                records.append({"ref": ref, "id": image_id})

    def public(self, image_id: str) -> None:
        """Forget an image an anonymous pull gave: whoever names it may run it."""
        with self._records(write=True) as records:
            records[:] = [r for r in records if r["id"] != image_id]

    def ids(self, local_id: Callable[[str], str | None]) -> set[str]:
        """The private image ids, with what a pull still running has tagged here so far."""
        with self._records() as records:
            kept = list(records)
        pending = {local_id(r["ref"]) for r in kept if r["id"] is None}
        return {r["id"] for r in kept if r["id"] is not None} | (pending - {None})


def image_to_run(
    client: docker.DockerClient, image: str, login: dict[str, str] | None, private: PrivateImages
) -> str:
    """Return the id of the image an op may run, pulling it first when it must.

    An op with a registry login always pulls, so the registry checks that login. Without one, an
    image found here runs as it is, unless this node pulled it with someone's login: then it runs
    only if an anonymous pull of it succeeds.

    Raises:
        ContainerFailed: the image cannot be pulled, or is private and the op gives no login.
    """
    if login:
        private.pulling(image)
        try:
            pulled = client.images.pull(image, auth_config=login).id
        except (DockerException, OSError) as e:
            private.pulled(image, None)
            raise ContainerFailed(
                f"The image {image!r} could not be pulled with the registry login in args.authentication.docker "
                f"({docker_reason(e)}). Check the username, password and server there, and that the registry is "
                "reachable from the node."
            ) from e
        private.pulled(image, pulled)
        return pulled
    found = _local_id(client, image)
    if found is None:
        try:
            pulled = client.images.pull(image, auth_config=ANONYMOUS).id
        except (DockerException, OSError) as e:
            raise ContainerFailed(
                f"The image {image!r} is not on this machine and could not be pulled ({docker_reason(e)}). "
                "Check the image name and tag, and that the registry is reachable from the node."
            ) from e
        private.public(pulled)
        return pulled
    if found not in private.ids(lambda ref: _local_id(client, ref)):
        return found
    try:
        pulled = client.images.pull(image, auth_config=ANONYMOUS).id
    except (DockerException, OSError) as e:
        log.info("image %s is private here and an anonymous pull failed: %s", image, docker_reason(e))
        raise ContainerFailed(
            f"The image {image!r} is private on this node: it was pulled with a registry login and the registry "
            "does not hand it out without one. Give registry credentials in args.authentication.docker."
        ) from e
    private.public(pulled)
    return pulled


def _local_id(client: docker.DockerClient, image: str) -> str | None:
    try:
        return client.images.get(image).id
    except ImageNotFound:
        return None
    except (DockerException, OSError) as e:
        raise ContainerFailed(f"Could not look up the image {image!r}: {docker_reason(e)}") from e

