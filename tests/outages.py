"""A PostgreSQL server of a test's own, on loopback, that the test may stop and start again.

The suite's shared PostgreSQL serves every test, so an outage is made on a private one: initdb into
a temporary folder, run as the `postgres` user when the tests run as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.stack import free_port


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in p.parent.name.split(".")])
    for folder in reversed(versions):
        if (folder / name).exists():
            return str(folder / name)
    raise FileNotFoundError(f"PostgreSQL's {name} is not installed (Debian's postgresql package has it).")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster: start(), stop() (a real shutdown: clients lose their
    connections), and url for the store."""

    def __init__(self):
        # Outside pytest's own temporary folders, which only root may enter.
        root = Path(tempfile.mkdtemp(prefix="peergrid-pg-"))
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://peergrid@127.0.0.1:{self.port}/peergrid"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(root, "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "peergrid", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, *argv: str) -> None:
        if self._as_postgres:
            argv = ("runuser", "-u", "postgres", "--", *argv)
        subprocess.run(argv, check=True, capture_output=True, cwd="/")

    def start(self) -> None:
        self._run(
            _bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off", "start",
        )
        if not (self.root / "created").exists():
            subprocess.run(
                [_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "peergrid", "peergrid"],
                check=True, capture_output=True,
            )
            (self.root / "created").touch()

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(what)
