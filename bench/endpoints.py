"""Endpoints: requests through the gateway and a node's SSH tunnel, against the same requests sent
straight to the service's port, in the same run.

    .venv/bin/python -m bench.endpoints [--seconds 5] [--clients 1,32] [--chunks 20 --spacing-ms 20]
                                        [--work-us 1000] [--no-container] [--profile FOLDER]

Each part runs in a process of its own, as in a deployment: the service, the gateway (with its
SQLite store), the node's tunnel, and the clients (this process). Three services:

- the headline: a small asyncio HTTP/1.1 server on loopback that answers at once and keeps
  connections alive. The fastest service shows the most of what the gateway adds per request; a
  container's published port would add Docker's proxy to both paths alike.
- the same server spending --work-us of CPU on each answer, as a handler with work to do does: how
  the ratio reads once the service, not the path, sets the pace.
- busybox httpd in a container of the test image, at its published port (needs Docker): what the
  tests serve. It closes every connection, so each request is a new connection and, through the
  gateway, a new SSH channel; that row measures a channel's opening, not keep-alive.

Prints requests per second, p50 and p99 latency at each client count with the CPU the gateway and
the tunnel spent per request; the time to the first byte, the gaps between chunks and each chunk's
delay from the service's write to the client for a streamed (chunked) answer; and the gateway's
figures against direct ones.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

from bench.common import percentile

BODY = b"hello from the service\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- the service -----------------------------------------------------------------------------


class ServiceProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: a fixed small answer to any GET (at /work/N, after N µs of CPU), and a
    chunked stream at /stream?N&MS whose chunks carry the monotonic time they were sent (one clock for
    every process on the machine)."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            if head.startswith(b"GET /stream"):
                query = head.split(b" ", 2)[1].partition(b"?")[2].decode()
                chunks, spacing_ms = (int(v) for v in query.split("&"))
                asyncio.ensure_future(self.stream(chunks, spacing_ms / 1000))
            elif head.startswith(b"GET /work/"):
                # A handler with work to do: spin for the microseconds the path names, then answer.
                until = time.perf_counter() + int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1]) / 1e6
                while time.perf_counter() < until:
                    pass
                self.transport.write(ANSWER)
            else:
                self.transport.write(ANSWER)

    async def stream(self, chunks: int, spacing_s: float) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in range(chunks):
            piece = b"%d %.6f\n" % (n, time.monotonic())
            self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if n + 1 < chunks:
                await asyncio.sleep(spacing_s)
        self.transport.write(b"0\r\n\r\n")


def run_service(pipe) -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(ServiceProtocol, "127.0.0.1", 0)
        pipe.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)

    asyncio.run(main())


# -- the gateway and the node's tunnel ---------------------------------------------------------


def _settings(root: str):
    from scheduler.settings import Settings

    return Settings.from_env(
        {"PEERGRID_DATABASE_URL": f"sqlite:///{root}/store.sqlite", "PEERGRID_BROKER_URL": f"sqla+sqlite:///{root}/broker.sqlite",
         "PEERGRID_SECRET_KEY": "bench"},
        data_dir=Path(root))


def run_gateway(root: str, pipe) -> None:
    from gateway.service import Gateway
    from scheduler.core import Core

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    core = Core.from_settings(_settings(root))

    async def main():
        gateway = Gateway(core, ssh_port=0, http_port=0)
        await gateway.start()
        pipe.send((gateway.http_port, gateway.ssh_port, gateway.key.export_public_key().decode()))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await gateway.stop()

    try:
        asyncio.run(main())
    finally:
        core.close()


def run_tunnel(address: str, key: str, node_id: int, token: str, forwards: list[tuple[str, int, int]], pipe) -> None:
    from worker.tunnel import Tunnel

    logging.basicConfig(level=logging.WARNING)
    tunnel = Tunnel(address, key, node_id, token)
    tunnel.start()
    for label, port, target in forwards:
        tunnel.open(label, port, target)
    deadline = time.monotonic() + 20
    while len(tunnel.forwarded) < len(forwards) and time.monotonic() < deadline:
        time.sleep(0.02)
    pipe.send(len(tunnel.forwarded) == len(forwards))
    pipe.recv()
    tunnel.stop()


def claimed_endpoints(root: str, ports: list[int]) -> tuple[int, str, list[str]]:
    """A job exposing `ports`, claimed by a new node: (node id, node token, the endpoints' labels by port)."""
    from sqlalchemy import select

    from scheduler.attempts import claim_attempt
    from scheduler.core import Core
    from scheduler.migrate import upgrade
    from scheduler.models import Attempt, Endpoint, Node
    from scheduler.nodes import NodeReport, register
    from tests import factories
    from web import create_app

    settings = _settings(root)
    upgrade(settings.database_url)
    core = Core.from_settings(settings)
    try:
        node_id, node_token, _ = factories.node(core, name="bench")
        _, token = factories.user(core)
        doc = factories.hello_world("busybox", cmd="httpd -f -p 8000")
        doc["ops"][0]["args"]["expose"] = ports
        response = create_app(core=core).test_client().post("/api/v1/jobs", json=doc, headers=factories.bearer(token))
        assert response.status_code == 201, response.json
        with core.transaction() as session:
            register(session, session.get(Node, node_id), NodeReport(slots=1))
            claim_attempt(session, session.get(Node, node_id), session.scalar(select(Attempt.id)))
            labels = list(session.scalars(select(Endpoint.label).order_by(Endpoint.port)))
        return node_id, node_token, labels
    finally:
        core.close()


class Httpd:
    """busybox httpd in a container of the test image, its port published on loopback (it answers
    one request per connection, as a forking server does)."""

    def __init__(self, image: str):
        import docker

        self.client = docker.from_env()
        self.container = self.client.containers.run(
            image, ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8000 -h /www"],
            detach=True, ports={"8000/tcp": ("127.0.0.1", None)}, labels={"peergrid-bench": "endpoints"})
        self.container.reload()
        self.port = int(self.container.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"])

    def close(self) -> None:
        self.container.remove(force=True)
        self.client.close()


# -- the clients -------------------------------------------------------------------------------


class ClientProtocol(asyncio.Protocol):
    """One kept-alive client connection sending one request after another, timing each answer."""

    def __init__(self, request: bytes, latencies: list[float], until: float):
        self.request, self.latencies, self.until = request, latencies, until
        self.buffer = b""
        self.expect = -1
        self.began = 0.0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.began = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expect < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            if not head.startswith(b"http/1.1 200"):
                self.fail(RuntimeError(f"answer {self.buffer[:200]!r}"))
                return
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            self.expect = end + 4 + length
        if len(self.buffer) < self.expect:
            return
        now = time.perf_counter()
        self.latencies.append(now - self.began)
        self.buffer = self.buffer[self.expect:]
        self.expect = -1
        if now < self.until:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def connection_lost(self, exc) -> None:
        self.fail(ConnectionError(f"the connection dropped: {exc}"))


async def load(port: int, host: str, clients: int, seconds: float, path: str = "/") -> tuple[float, list[float]]:
    """(requests per second, latencies) of `clients` kept-alive connections for `seconds`."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    protocols = []
    for _ in range(clients):
        _, protocol = await loop.create_connection(lambda: ClientProtocol(request, latencies, until), "127.0.0.1", port)
        protocols.append(protocol)
    began = time.perf_counter()
    await asyncio.gather(*(p.done for p in protocols))
    elapsed = time.perf_counter() - began
    for p in protocols:
        p.transport.close()
    return len(latencies) / elapsed, latencies


async def fresh_connections(port: int, host: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    """(requests per second, latencies) of `clients` clients each opening a connection per request."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    latencies: list[float] = []
    until = time.perf_counter() + seconds

    async def client():
        while time.perf_counter() < until:
            began = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await reader.read()
            writer.close()
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"answer {answer[:200]!r}")
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - began), latencies


async def stream(port: int, host: str, chunks: int, spacing_ms: int) -> tuple[float, list[float], list[float]]:
    """Time to the first chunk (s), the gaps between chunks as they arrived (s), and how long each
    chunk took from the service's write to the client (s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    writer.write(f"GET /stream?{chunks}&{spacing_ms} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    arrivals, delays = [], []
    for _ in range(chunks):
        size = int(await reader.readuntil(b"\r\n"), 16)
        piece = await reader.readexactly(size + 2)
        now = time.monotonic()
        arrivals.append(now)
        delays.append(now - float(piece.split()[1]))
    assert await reader.readuntil(b"0\r\n\r\n")
    writer.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return arrivals[0] - began, gaps, delays


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process pid so far, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def profiled(folder: str | None, name: str, target, *args) -> None:
    """Run target(*args), under cProfile when folder is given (its statistics go to folder/name.prof)."""
    if folder is None:
        target(*args)
        return
    import cProfile

    profile = cProfile.Profile()
    try:
        profile.runcall(target, *args)
    finally:
        profile.dump_stats(str(Path(folder) / f"{name}.prof"))


# -- the run -----------------------------------------------------------------------------------


IMAGE = os.environ.get("PEERGRID_TEST_IMAGE", "peergrid-test/busybox:latest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each load runs")
    parser.add_argument("--clients", default="1,32", help="client counts, comma-separated")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--spacing-ms", type=int, default=20)
    parser.add_argument("--work-us", type=int, default=1000,
                        help="also measure a service spending this many µs of CPU per answer (0: not)")
    parser.add_argument("--no-container", action="store_true", help="leave out busybox httpd in a container")
    parser.add_argument("--profile", metavar="FOLDER", help="write each process's cProfile statistics here")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    spawn = multiprocessing.get_context("spawn")
    httpd = None
    with tempfile.TemporaryDirectory() as root:
        node_id, node_token, labels = claimed_endpoints(root, [8000, 8001])
        pipes, processes = [], {}

        def start(name, target, *extra):
            ours, theirs = spawn.Pipe()
            process = spawn.Process(target=profiled, args=(args.profile, name, target, *extra, theirs), name=name,
                                    daemon=True)
            process.start()
            pipes.append(ours)
            processes[name] = process
            return ours

        try:
            service_port = start("service", run_service).recv()
            forwards = [(labels[0], 8000, service_port)]
            if not args.no_container:
                httpd = Httpd(IMAGE)
                forwards.append((labels[1], 8001, httpd.port))
            http_port, ssh_port, key = start("gateway", run_gateway, root).recv()
            tunnel = start("tunnel", run_tunnel, f"127.0.0.1:{ssh_port}", key, node_id, node_token, forwards)
            assert tunnel.recv(), "the node's tunnel never got its forwards from the gateway"
            paths = {"direct": (service_port, f"127.0.0.1:{service_port}"),
                     "gateway": (http_port, f"{labels[0]}.localhost:{http_port}")}
            container = None if httpd is None else {
                "direct": (httpd.port, f"127.0.0.1:{httpd.port}"),
                "gateway": (http_port, f"{labels[1]}.localhost:{http_port}")}
            asyncio.run(measure(paths, container, counts, args, processes))
        finally:
            for pipe in pipes:
                try:
                    pipe.send("stop")
                except OSError:
                    pass  # that process has gone already; what it said is above
            for process in processes.values():
                process.join(15)
                if process.is_alive():
                    process.kill()
            if httpd is not None:
                httpd.close()


async def rows(title: str, run, paths: dict, counts: list[int], seconds: float, processes: dict) -> None:
    """Measure run(port, host, clients, seconds) on each path at each client count; print a table and the ratios."""
    print(title)
    print(f"{'path':8} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'gateway CPU µs/req':>19} "
          f"{'tunnel CPU µs/req':>18} {'cores busy':>10}")
    figures: dict[tuple[str, int], tuple[float, float]] = {}
    for clients in counts:
        for path, (port, host) in paths.items():
            before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
            began, ours = time.perf_counter(), time.process_time()
            rate, latencies = await run(port, host, clients, seconds)
            used = {name: cpu_seconds(p.pid) - before[name] for name, p in processes.items()}
            busy = (sum(used.values()) + time.process_time() - ours) / (time.perf_counter() - began)
            p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
            figures[(path, clients)] = (rate, p50)
            per = {name: used[name] / len(latencies) * 1e6 for name in ("gateway", "tunnel")}
            print(f"{path:8} {clients:7d} {rate:9.0f} {p50:8.2f} {p99:8.2f} {per['gateway']:19.0f} {per['tunnel']:18.0f} "
                  f"{busy:10.2f}")
    for clients in counts:
        (direct, direct_p50), (through, through_p50) = figures[("direct", clients)], figures[("gateway", clients)]
        print(f"  {clients} client(s): gateway {through / direct:.2f}× the direct request rate, "
              f"p50 {through_p50 - direct_p50:+.2f} ms")


async def measure(paths: dict, container: dict | None, counts: list[int], args, processes: dict) -> None:
    for port, host in paths.values():  # warm up each path: connections, the tunnel's first channel
        await load(port, host, max(counts), min(0.5, args.seconds))
    print(f"endpoints, {args.seconds:g} s a row, {os.cpu_count()} cores; CPU is what the gateway's and the tunnel's "
          "processes used per request; cores busy counts the service's, the gateway's, the tunnel's and the clients' "
          "(not Docker's)")
    await rows(f"kept-alive GETs, a {len(ANSWER)}-byte answer from an asyncio service on loopback", load, paths, counts,
               args.seconds, processes)
    if args.work_us:
        await rows(f"kept-alive GETs, the same service spending {args.work_us} µs of CPU on each answer",
                   partial(load, path=f"/work/{args.work_us}"), paths, counts, args.seconds, processes)
    if container is not None:
        await rows(f"a connection per GET, busybox httpd in a container ({IMAGE}), its published port",
                   fresh_connections, container, counts, args.seconds, processes)

    print(f"streamed answer: {args.chunks} chunks, one every {args.spacing_ms} ms, from the asyncio service")
    print(f"{'path':8} {'first byte ms':>13} {'gap p50 ms':>10} {'gap max ms':>10} {'delay p50 ms':>12} "
          f"{'delay max ms':>12}")
    for path, (port, host) in paths.items():
        first, gaps, delays = await stream(port, host, args.chunks, args.spacing_ms)
        gap_p50 = statistics.median(gaps) * 1000 if gaps else 0.0
        gap_max = max(gaps) * 1000 if gaps else 0.0
        print(f"{path:8} {first * 1000:13.2f} {gap_p50:10.2f} {gap_max:10.2f} {statistics.median(delays) * 1000:12.2f} "
              f"{max(delays) * 1000:12.2f}")
        if path == "gateway":
            # Held back means chunks waiting on later ones: the first, or the typical one, arriving a
            # whole spacing or more after the service wrote it.
            held = delays[0] * 1000 >= args.spacing_ms or statistics.median(delays) * 1000 >= args.spacing_ms
            print(f"buffered: {'yes' if held else 'no'} (the first chunk reached the client {delays[0] * 1000:.2f} ms "
                  f"after the service wrote it, the median one {statistics.median(delays) * 1000:.2f} ms)")


if __name__ == "__main__":
    main()
