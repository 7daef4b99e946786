"""A TCP proxy that a test can cut like a pulled cable, or that drops one answer on its way back."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable


class TcpProxy:
    """Forward 127.0.0.1:<port> to an upstream address.

    cut() stops listening and resets every open connection, as a network outage does to both
    ends; restore() listens on the same port again. With on_answer set, the first bytes the
    upstream sends back on a connection call it once, and the client gets a reset instead.
    """

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.on_answer: Callable[[], None] | None = None
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> "TcpProxy":
        self.restore()
        return self

    def __exit__(self, *exc) -> None:
        self.cut()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (Linux)
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            _reset(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                hook = self.on_answer if answers else None
                if hook is not None:
                    self.on_answer = None
                    hook()
                    _reset(sink)
                    _reset(source)
                    return
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self._lock:
            self._open -= {source, sink}


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset rather than an orderly end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes a thread blocked reading it; the reset goes out when the last user lets go.
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
