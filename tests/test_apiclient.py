"""The command line's API client against a server that drops kept-alive connections."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from cli.apiclient import ApiClient, ApiError


class ResettingServer:
    """An HTTP server on loopback that answers {"n": N} and resets the first `resets` connections
    once a request has arrived on them, as a server closing an idle kept-alive connection does
    when the next request crosses it."""

    def __init__(self, resets: int):
        self.resets = resets
        self.answered = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if self.resets > 0:
                    self.resets -= 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                self.answered += 1
                body = b'{"n": %d}' % self.answered
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server():
    made = []
    yield lambda resets: made.append(ResettingServer(resets)) or made[-1]
    for s in made:
        s.close()


def test_a_get_meets_a_reset_and_is_sent_again(server):
    s = server(resets=1)
    client = ApiClient(f"http://127.0.0.1:{s.port}", "pg_x")
    assert client.get("/jobs/1") == {"n": 1}


def test_a_post_is_not_sent_again_unless_asked(server):
    s = server(resets=1)
    client = ApiClient(f"http://127.0.0.1:{s.port}", "pg_x")
    with pytest.raises(ApiError, match="Cannot reach the server"):
        client.post("/jobs/1/cancel")
    assert s.answered == 0


def test_a_server_that_keeps_resetting_is_reported_with_the_tries(server):
    s = server(resets=100)
    client = ApiClient(f"http://127.0.0.1:{s.port}", "pg_x")
    with pytest.raises(ApiError, match="4 tries"):
        client.get("/jobs/1")
