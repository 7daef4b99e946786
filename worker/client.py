"""The node API, as the worker calls it over HTTP."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

import requests

from protocol import VERSION
from protocol.messages import (
    ClaimAnswer,
    FinishedAnswer,
    FinishedReport,
    HeartbeatAnswer,
    Joined,
    JoinRequest,
    LogRecord,
    LogsAnswer,
    NodeReport,
    Registration,
    ReleaseReport,
)
from protocol.services import HealthReport
from protocol.wire import ProtocolError
from worker.errors import AttemptGone, ServerError

log = logging.getLogger(__name__)

# How often the agent's loops retry their calls; the loops allow for as long as those may take.
HEARTBEAT_RETRIES = 1
CLAIM_RETRIES = 2


def _retry_delay(attempt: int) -> float:
    """Seconds before retrying a call after its attempt-th failure (from 0)."""
    return min(0.5 * 2**attempt, 8.0)


class NodeClient:
    def __init__(self, server: str, token: str, *, timeout: float = 15.0):
        self.base = server.rstrip("/") + "/api/v1/node"
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers.update(
            {"Authorization": f"Bearer {token}", "User-Agent": f"peergrid-worker (protocol {VERSION})"}
        )

    def longest_s(self, retries: int) -> float:
        """How long a call with these retries may wait on a server that does not answer."""
        return (retries + 1) * self.timeout + sum(_retry_delay(n) for n in range(retries))

    def _post(self, path: str, body: dict | None = None, *, retries: int = 3) -> dict[str, Any]:
        """POST to the node API, retrying connection failures and 5xx answers a few times."""
        for attempt in range(retries + 1):
            try:
                response = self.http.post(self.base + path, json=body or {}, timeout=self.timeout)
            except requests.RequestException as e:
                error = ServerError(f"The server at {self.base} cannot be reached: {e}")
            else:
                if response.status_code == 409:
                    raise AttemptGone(_message(response), 409)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise ServerError(_message(response), response.status_code)
                    return response.json()
                error = ServerError(_message(response), response.status_code)
            if attempt == retries:
                raise error
            log.warning("%s; retrying in %.1fs", error, _retry_delay(attempt))
            time.sleep(_retry_delay(attempt))
        raise AssertionError("unreachable")

    def register(self, report: NodeReport) -> Registration:
        return _read(Registration.from_wire, self._post("/register", report.to_wire(), retries=5))

    def heartbeat(self, report: NodeReport) -> HeartbeatAnswer:
        return _read(HeartbeatAnswer.from_wire, self._post("/heartbeat", report.to_wire(), retries=HEARTBEAT_RETRIES))

    def claim(self, attempt_id: int, *, gpus: list[str] | None = None) -> ClaimAnswer:
        body = {"gpus": gpus or []}
        return _read(ClaimAnswer.from_wire, self._post(f"/attempts/{attempt_id}/claim", body, retries=CLAIM_RETRIES))

    def started(self, attempt_id: int) -> None:
        self._post(f"/attempts/{attempt_id}/started")

    def logs(self, attempt_id: int, lines: list[LogRecord] | tuple[LogRecord, ...], *, retries: int = 3) -> LogsAnswer:
        body = {"lines": [line.to_wire() for line in lines]}
        return _read(LogsAnswer.from_wire, self._post(f"/attempts/{attempt_id}/logs", body, retries=retries))

    def finished(self, attempt_id: int, report: FinishedReport, *, retries: int = 3) -> FinishedAnswer:
        """Report how the attempt ended, with the log lines not sent yet; the answer may carry the
        node's next work, claimed for it already."""
        return _read(FinishedAnswer.from_wire,
                     self._post(f"/attempts/{attempt_id}/finished", report.to_wire(), retries=retries))

    def release(self, attempt_id: int, report: ReleaseReport, *, retries: int = 3) -> None:
        """Give an attempt back unfinished, with the log lines not sent yet: the worker is stopping."""
        self._post(f"/attempts/{attempt_id}/release", report.to_wire(), retries=retries)

    def health(self, attempt_id: int, report: HealthReport, *, retries: int = 1) -> None:
        """Report a service attempt's health checks and restarts, which changed."""
        self._post(f"/attempts/{attempt_id}/health", report.to_wire(), retries=retries)

    def upload_artifact(self, attempt_id: int, archive, sha256: str, *, retries: int = 3) -> None:
        """PUT the output archive; retried on connection failures and 5xx like other reports."""
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                with open(archive, "rb") as body:
                    response = self.http.put(
                        f"{self.base}/attempts/{attempt_id}/artifact",
                        data=body,
                        headers={"X-Checksum-Sha256": sha256, "Content-Type": "application/gzip"},
                        timeout=max(self.timeout, 300),
                    )
            except requests.RequestException as e:
                error = ServerError(f"The server at {self.base} cannot be reached: {e}")
            else:
                if response.status_code == 409 and "already" not in _message(response):
                    raise AttemptGone(_message(response), 409)
                if response.status_code < 500 and response.status_code not in (201, 409):
                    raise ServerError(_message(response), response.status_code)
                if response.status_code < 500:
                    return
                error = ServerError(_message(response), response.status_code)
            if attempt == retries:
                raise error
            time.sleep(delay)
            delay *= 2

    def download_input(self, attempt_id: int, op: str, dest) -> None:
        try:
            with self.http.get(f"{self.base}/attempts/{attempt_id}/inputs/{quote(op, safe='')}", stream=True, timeout=max(self.timeout, 300)) as response:
                if response.status_code == 409:
                    raise AttemptGone(_message(response), 409)
                if response.status_code >= 400:
                    raise ServerError(f"Could not fetch the output of {op}: {_message(response)}", response.status_code)
                with open(dest, "wb") as out:
                    for chunk in response.iter_content(1024 * 1024):
                        out.write(chunk)
        except requests.RequestException as e:
            raise ServerError(f"Could not fetch the output of {op}: {e}") from e


def join(server: str, join_token: str, request: JoinRequest, *, timeout: float = 15.0) -> Joined:
    """Ask the server, once, to make this worker a node of the join token's owner.

    Raises:
        ServerError: it cannot be reached (status None) or refused (its status and sentence).
    """
    url = server.rstrip("/") + "/api/v1/nodes/join"
    headers = {"Authorization": f"Bearer {join_token}", "User-Agent": f"peergrid-worker (protocol {VERSION})"}
    try:
        response = requests.post(url, json=request.to_wire(), headers=headers, timeout=timeout)
    except requests.RequestException as e:
        raise ServerError(f"The server at {server} cannot be reached: {e}") from e
    if response.status_code >= 400:
        raise ServerError(_message(response), response.status_code)
    try:
        body = response.json()
    except ValueError as e:
        raise ServerError(f"The server's answer to joining is not JSON ({response.status_code} {response.reason}).",
                          response.status_code) from e
    return _read(Joined.from_wire, body)


def _message(response: requests.Response) -> str:
    try:
        return response.json().get("error") or response.reason
    except ValueError:
        return f"{response.status_code} {response.reason}"


def _read(parse, body: dict[str, Any]):
    """Read an answer of the node API, or raise ServerError when it is not what this worker speaks."""
    try:
        return parse(body)
    except ProtocolError as e:
        raise ServerError(f"The server's answer is not one this worker understands: {e}") from e
