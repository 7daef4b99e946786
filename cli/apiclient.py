"""A small client of the REST API, for the command line."""

from __future__ import annotations

import time
from typing import Any, Callable

import requests

# What breaks a request before its answer arrives: refused, reset, cut off midway, or no answer in time.
LOST = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


# How many times a GET is sent when the connection breaks or the server says 503: about 4 s in all.
GET_TRIES = 4


class ApiError(Exception):
    """Raised when the server answers with an error or cannot be reached."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class ApiClient:
    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def request(
        self, method: str, path: str, *, tries: int = 1, on_retry: Callable[[str, float], None] | None = None,
        **kwargs,
    ) -> Any:
        """Send a request; with tries > 1, send it again when the connection breaks before an answer
        or the server says 503, waiting longer each time. Only for requests that are safe to repeat
        (a submit with an Idempotency-Key is). on_retry(why, seconds) hears of each wait."""
        url = f"{self.server}/api/v1{path}"
        for attempt in range(1, tries + 1):
            wait = min(0.5 * 2 ** (attempt - 1), 8.0)
            try:
                response = self.http.request(method, url, timeout=self.timeout, **kwargs)
            except LOST as e:
                if attempt == tries:
                    raise ApiError(
                        f"Cannot reach the server at {self.server} ({type(e).__name__}"
                        f"{f', {tries} tries' if tries > 1 else ''}). Is it running? Set PEERGRID_SERVER to its address."
                    ) from e
                why = type(e).__name__
            except requests.RequestException as e:
                raise ApiError(
                    f"Cannot reach the server at {self.server} ({type(e).__name__}). "
                    "Is it running? Set PEERGRID_SERVER to its address."
                ) from e
            else:
                if response.status_code != 503 or attempt == tries:
                    break
                why = "503 Service Unavailable"
                wait = _retry_after(response, default=wait)
            if on_retry is not None:
                on_retry(why, wait)
            time.sleep(wait)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise ApiError(message or f"{response.status_code} {response.reason}", response.status_code, body)
        return body

    def get(self, path: str, **params) -> Any:
        # A GET is safe to send again: a server may close an idle kept-alive connection just as the
        # next request goes out on it, and that request then meets a reset, not an answer.
        return self.request("GET", path, tries=GET_TRIES, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, **params) -> Any:
        return self.request("POST", path, json=body, params={k: v for k, v in params.items() if v is not None})


def _retry_after(response: requests.Response, *, default: float) -> float:
    """The seconds a 503 asks to wait (at most 30), or default."""
    try:
        return min(max(float(response.headers.get("Retry-After", "")), 0.0), 30.0)
    except ValueError:
        return default
