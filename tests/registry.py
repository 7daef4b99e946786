"""Registries on loopback for tests: one serving a local image behind a Basic login, for pulls that must ask."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


class RegistryHandler(http.server.BaseHTTPRequestHandler):
    """Answers requests as a registry does (JSON unless told otherwise), and quietly."""

    def answer(self, status: int, body: dict | bytes, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args):
        pass


class LoopbackServer:
    """Serve a handler on a free loopback port, in a thread, until closed."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blobs(docker_client, image: str) -> tuple[bytes, dict[str, bytes]]:
    """A copy of a local image as a registry holds it: its manifest, and its config and layers by digest."""
    saved = tarfile.open(fileobj=io.BytesIO(b"".join(docker_client.images.get(image).save())))
    entry = json.load(saved.extractfile("manifest.json"))[0]
    config = json.load(saved.extractfile(entry["Config"]))
    # A label of its own gives the copy an id of its own: removing it later leaves the original.
    config["config"]["Labels"] = {**(config["config"].get("Labels") or {}), "peergrid.test.copy": "private"}
    config = json.dumps(config).encode()
    blobs = {_digest(config): config}
    layers = []
    for path in entry["Layers"]:
        layer = gzip.compress(saved.extractfile(path).read(), mtime=0)
        blobs[_digest(layer)] = layer
        layers.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                       "size": len(layer), "digest": _digest(layer)})
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                   "digest": _digest(config)},
        "layers": layers,
    }).encode()
    return manifest, blobs


class ImageRegistry(LoopbackServer):
    """Serve a copy of a local image as `<address>/<repo>:<tag>` to whoever gives the login; keep who asked."""

    def __init__(self, docker_client, image: str, *, login: tuple[str, str], repo: str = "private/app", tag: str = "1"):
        manifest, blobs = _blobs(docker_client, image)
        accepted = "Basic " + base64.b64encode(":".join(login).encode()).decode()
        # The Authorization header of each manifest request that reached the registry.
        asked = self.manifest_requests = []

        class Handler(RegistryHandler):
            def do_GET(self):
                given = self.headers.get("Authorization")
                found = re.fullmatch(rf"/v2/{re.escape(repo)}/(manifests|blobs)/([^/]+)", self.path)
                if found and found[1] == "manifests":
                    asked.append(given)
                if given != accepted:
                    self.answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                {"WWW-Authenticate": 'Basic realm="test"'})
                elif self.path == "/v2/":
                    self.answer(200, {})
                elif found and found[1] == "manifests" and found[2] in (tag, _digest(manifest)):
                    self.answer(200, manifest, {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": _digest(manifest)})
                elif found and found[1] == "blobs" and found[2] in blobs:
                    self.answer(200, blobs[found[2]], {"Content-Type": "application/octet-stream",
                                                       "Docker-Content-Digest": found[2]})
                else:
                    self.answer(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})

            do_HEAD = do_GET

        super().__init__(Handler)
        self.reference = f"{self.address}/{repo}:{tag}"
