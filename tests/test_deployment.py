"""compose.yaml and the Dockerfile: valid, complete, secret-free, and every command they name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import yaml

from cli import main as peergrid

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command or [])


def test_the_scaled_set_up_is_all_there():
    assert {"postgres", "redis", "migrate", "web", "scheduler", "worker"} <= set(SERVICES)
    env = SERVICES["web"]["environment"]
    assert env["PEERGRID_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["PEERGRID_BROKER_URL"].startswith("redis://")


def test_every_peergrid_command_it_names_exists():
    for name, service in SERVICES.items():
        argv = command_of(service)
        if not argv or argv[0] != "peergrid":
            continue
        group = peergrid
        ctx = click.Context(peergrid)
        for word in argv[1:]:
            if word.startswith("-") or not isinstance(group, click.Group):
                break
            sub = group.get_command(ctx, word)
            assert sub is not None, f"{name}: `peergrid {' '.join(argv[1:])}` is not a command"
            group = sub
        options = {opt for param in group.params for opt in getattr(param, "opts", [])}
        for word in argv[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{name}: {word} is not an option of {group.name}"


def test_the_web_server_command_points_at_a_real_app():
    argv = command_of(SERVICES["web"])
    assert argv[0] == "gunicorn"
    # Idle connections outlive the CLI's 2 s between polls (gunicorn's own default closes them at 2 s),
    # and no control socket is made.
    assert int(argv[argv.index("--keep-alive") + 1]) >= 30 and "--no-control-socket" in argv
    module, attribute = argv[-1].split(":")
    assert module == "web.wsgi" and attribute == "app" and (ROOT / "web" / "wsgi.py").exists()


def test_every_long_lived_service_has_a_health_check_and_the_web_stays_on_loopback():
    for name in ("postgres", "redis", "web", "scheduler", "worker", "gateway"):
        assert "healthcheck" in SERVICES[name], name
    for name in ("web", "scheduler", "worker", "gateway"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "peergrid", "health"], name
        assert SERVICES[name]["environment"]["PEERGRID_HEALTH_FILE"], name
    # Published on loopback; a proxy in front does TLS.
    assert SERVICES["web"]["ports"] == ["127.0.0.1:${PEERGRID_PORT:-8000}:8000"]


def test_workers_run_cpu_only_and_the_gpu_file_adds_the_reservation():
    worker = SERVICES["worker"]
    assert "deploy" not in worker  # a host without NVIDIA's runtime can start it
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    # Each replica's state on a volume of its own: its node token outlives restarts, and is not shared.
    assert "/var/lib/peergrid-worker" in worker["volumes"]
    assert worker["environment"]["PEERGRID_WORKER_DATA_DIR"] == "/var/lib/peergrid-worker"
    assert worker["environment"]["PEERGRID_JOIN_TOKEN"] == "${PEERGRID_JOIN_TOKEN:-}"
    gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())
    devices = gpu["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert set(gpu["services"]) == {"worker"}


def test_the_file_starts_before_any_node_exists():
    # Compose checks every ${VAR:?} of the file on every command: only the server's secrets may be
    # mandatory, since tokens can only be made once the web runs.
    mandatory = set(re.findall(r"\$\{(\w+):\?", (ROOT / "compose.yaml").read_text()))
    assert mandatory == {"POSTGRES_PASSWORD", "PEERGRID_SECRET_KEY"}


def test_secrets_files_stay_out_of_git_and_the_image():
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_no_secret_is_written_in_the_file():
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}: {key} has a literal value"
            assert not re.search(r"://\w+:(?!\$\{)[^@\s]+@", str(value)), f"{name}: {key} carries a literal password"


def test_the_dockerfile_copies_what_exists():
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_flower_reads_the_broker_the_scheduler_uses_and_stays_on_loopback():
    flower = SERVICES["flower"]
    assert flower["profiles"] == ["flower"]  # optional: not started by a plain `up`
    assert f"--broker={SERVICES['scheduler']['environment']['PEERGRID_BROKER_URL']}" in command_of(flower)
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_each_worker_replica_joins_as_a_node_of_its_own():
    """`--scale worker=N` makes N nodes: the replicas join with a join token, and each keeps the node
    token it got in a volume of its own (a named volume would be shared by all, and so would the token)."""
    worker = SERVICES["worker"]
    env = worker["environment"]
    assert env["PEERGRID_JOIN_TOKEN"].startswith("${") and not env["PEERGRID_NODE_TOKEN"].startswith("${PEERGRID_NODE_TOKEN:?")
    state = env["PEERGRID_WORKER_DATA_DIR"]
    assert state in worker["volumes"]  # an anonymous volume: one per replica
    assert not any(v.endswith(":" + state) for v in worker["volumes"])


def test_the_image_holds_every_package_and_gives_its_user_a_home_and_the_data_dir():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert package in copied, f"the Dockerfile does not copy {package}/"
    assert "--create-home" in dockerfile
    assert "-o peergrid -g peergrid" in dockerfile and "/data" in dockerfile
    assert dockerfile.index("/data") < dockerfile.index("USER peergrid")
    # gunicorn comes pinned, from the deploy extra.
    assert '".[deploy]"' in dockerfile and 'deploy = ["gunicorn==' in pyproject


def test_every_image_the_set_up_starts_from_has_a_stand_in():
    script = (ROOT / "scripts" / "base-images").read_text()
    standins = set(re.findall(r"\[([\w.:/-]+)\]=\w+", script))
    named = {s["image"] for n, s in SERVICES.items() if "image" in s and "build" not in s and not s.get("profiles")}
    named |= set(re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M))
    assert named == standins
