"""A small client of the REST API, for the command line."""

from __future__ import annotations

from typing import Any

import requests


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

    def request(self, method: str, path: str, **kwargs) -> Any:
        url = f"{self.server}/api/v1{path}"
        try:
            response = self.http.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            raise ApiError(
                f"Cannot reach the server at {self.server} ({type(e).__name__}). "
                "Is it running? Set PEERGRID_SERVER to its address."
            ) from e
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise ApiError(message or f"{response.status_code} {response.reason}", response.status_code, body)
        return body

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, **params) -> Any:
        return self.request("POST", path, json=body, params={k: v for k, v in params.items() if v is not None})
