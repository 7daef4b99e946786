"""A worker with a join token joins once as a node of its own, keeps the node token it got, and is
that node on every later start; many workers with one join token are many nodes."""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from scheduler.accounts import hash_token
from scheduler.joining import revoke_join_token
from scheduler.models import Node, User
from scheduler.nodes import remove_node
from tests import factories
from tests.proxy import TcpProxy
from tests.stack import Api, embedded_stack
from worker.agent import Agent
from worker.errors import WorkerError
from worker.joining import TOKEN_FILE, node_token
from worker.settings import WorkerSettings


@pytest.fixture
def server(database_url, tmp_path):
    """A real app on each store, served over HTTP from this process; yields its core and URL."""
    with factories.served(database_url, tmp_path) as (core, client):
        http = make_server("127.0.0.1", 0, client.application, threaded=True)
        threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            yield core, f"http://127.0.0.1:{http.server_port}"
        finally:
            http.shutdown()


def nodes_of(core, owner_id: int) -> list[tuple[str, int | None]]:
    with core.transaction() as session:
        return session.execute(
            select(Node.name, Node.join_token_id).where(Node.owner_id == owner_id).order_by(Node.id)
        ).all()


def test_a_worker_joins_once_and_later_starts_use_the_token_it_saved(server, tmp_path, caplog):
    core, url = server
    owner_id, _ = factories.user(core)
    join_token = factories.join_token(core, owner_id)
    settings = WorkerSettings(server=url, join_token=join_token, name="gpu-a", data_dir=tmp_path / "state")

    # Given a worker with a join token and no node token, when it starts
    with caplog.at_level(logging.INFO, logger="worker.joining"):
        first = node_token(settings, stopping=threading.Event())

    # Then it joins as a new node of the token's owner, says so in one line, and keeps the node token
    # in its data dir, readable by its user alone
    saved = tmp_path / "state" / TOKEN_FILE
    assert first.token.startswith("pgn_") and first.saved_in == saved
    assert saved.read_text().strip() == first.token
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    with core.transaction() as session:
        node = session.scalar(select(Node).where(Node.owner_id == owner_id))
        node_id, join_token_id = node.id, node.join_token_id
        assert node.name == "gpu-a" and node.token_hash == hash_token(first.token) and join_token_id is not None
    assert [r.getMessage() for r in caplog.records if "joined" in r.getMessage()] == [f"joined as node gpu-a ({node_id})"]

    # When it starts again, even with its join token revoked meanwhile, it is the same node: it joins no more
    with core.transaction() as session:
        revoke_join_token(session, session.get(User, owner_id), join_token_id)
    again = node_token(settings, stopping=threading.Event())
    assert again.token == first.token and len(nodes_of(core, owner_id)) == 1


def test_a_node_token_given_wins_over_the_one_saved(tmp_path):
    (tmp_path / TOKEN_FILE).write_text("pgn_saved\n")
    given = WorkerSettings(server="http://127.0.0.1:9", token="pgn_given", data_dir=tmp_path)
    assert node_token(given, stopping=threading.Event()).token == "pgn_given"
    saved = WorkerSettings(server="http://127.0.0.1:9", join_token="pgj_x", data_dir=tmp_path)
    assert node_token(saved, stopping=threading.Event()).token == "pgn_saved"  # no server needed: no join


def test_a_saved_token_whose_node_was_removed_fails_naming_the_file_and_never_joins_again(server, tmp_path):
    core, url = server
    owner_id, _ = factories.user(core)
    settings = WorkerSettings(server=url, join_token=factories.join_token(core, owner_id), name="gpu-a",
                              data_dir=tmp_path / "state", simulate_gpus="NVIDIA GeForce RTX 4090:24")
    node_token(settings, stopping=threading.Event())
    with core.transaction() as session:
        remove_node(session, session.scalar(select(Node).where(Node.owner_id == owner_id)))

    # When the worker starts again with the saved token of the removed node
    agent = Agent(settings)
    with pytest.raises(WorkerError) as refused:
        agent.register()

    # Then it stops with a sentence naming the file to delete, and made no node meanwhile
    saved = tmp_path / "state" / TOKEN_FILE
    assert f"Delete {saved} to join again as a new node." in str(refused.value)
    assert len(nodes_of(core, owner_id)) == 1 and saved.exists()


def test_a_name_taken_or_a_revoked_join_token_is_refused_with_the_servers_sentence(server, tmp_path):
    core, url = server
    owner_id, _ = factories.user(core)
    join_token = factories.join_token(core, owner_id)
    node_token(WorkerSettings(server=url, join_token=join_token, name="gpu", data_dir=tmp_path / "a"),
               stopping=threading.Event())

    with pytest.raises(WorkerError, match=r"give each worker its own name \(--name / PEERGRID_NODE_NAME\)"):
        node_token(WorkerSettings(server=url, join_token=join_token, name="gpu", data_dir=tmp_path / "b"),
                   stopping=threading.Event())
    with pytest.raises(WorkerError, match="PEERGRID_JOIN_TOKEN"):
        node_token(WorkerSettings(server=url, join_token="pgj_unknown", name="other", data_dir=tmp_path / "c"),
                   stopping=threading.Event())
    assert not (tmp_path / "b" / TOKEN_FILE).exists() and not (tmp_path / "c" / TOKEN_FILE).exists()


def test_joining_waits_for_a_server_that_cannot_be_reached(server, tmp_path):
    core, url = server
    owner_id, _ = factories.user(core)
    upstream = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    with TcpProxy(upstream) as proxy:
        proxy.cut()
        settings = WorkerSettings(server=f"http://127.0.0.1:{proxy.port}", join_token=factories.join_token(core, owner_id),
                                  name="patient", data_dir=tmp_path)
        got = []
        joining = threading.Thread(target=lambda: got.append(node_token(settings, stopping=threading.Event())))
        joining.start()
        time.sleep(0.5)  # its first try has failed: the server cannot be reached
        assert not got
        proxy.restore()
        joining.join(10)
    assert got and got[0].token.startswith("pgn_") and nodes_of(core, owner_id)[0][0] == "patient"


def test_a_worker_without_either_token_says_what_to_set(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PEERGRID_WORKER_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "cli", "worker", "--server", "http://127.0.0.1:9"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=factories.__file__.rsplit("/tests/", 1)[0])
    assert done.returncode == 1
    assert "set PEERGRID_NODE_TOKEN" in done.stderr and "or PEERGRID_JOIN_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_workers_that_join_with_one_token_are_nodes_of_their_own_and_each_runs_work(tmp_path, sqlite_url, test_image):
    """Given two workers started with one join token and different names, then both join as nodes
    of the token's owner, and both run work; a restarted one is still its node."""
    with embedded_stack(tmp_path, sqlite_url, PEERGRID_HEARTBEAT_INTERVAL="1") as stack:
        owner_id, owner_token = factories.user(stack.core)
        join_token = factories.join_token(stack.core, owner_id)
        for name in ("replica-1", "replica-2"):
            stack.start_joining_worker(join_token, name)
        owner = Api(stack.url, owner_token)
        online = wait_for(lambda: sorted(n["name"] for n in owner.get("/nodes")["nodes"] if n["state"] == "online"),
                          ["replica-1", "replica-2"], stack)

        # When an op holds one node's only slot, the next op runs on the other
        first = stack.api.post("/jobs", factories.hello_world(test_image, ["sleep", "3"])).json()["id"]
        busy = wait_for(lambda: (stack.api.get(f"/jobs/{first}")["ops"][0]["node"] or {}).get("name"), None, stack,
                        until=lambda name: name is not None)
        second = stack.api.post("/jobs", factories.hello_world(test_image)).json()["id"]
        ran = {stack.api.wait(job, timeout=60)["ops"][0]["node"]["name"] for job in (first, second)}
        assert ran == set(online), (busy, stack.logs())

        # A restarted worker is the node it joined as: no node is made, and it does not join again
        stack.restart("replica-1", lambda: stack.start_joining_worker(join_token, "replica-1"))
        wait_for(lambda: "registered as node replica-1" in (stack.root / "replica-1.log").read_text(), True, stack)
        assert sorted(name for name, _ in nodes_of(stack.core, owner_id)) == ["replica-1", "replica-2"]
        assert "joined as node" not in (stack.root / "replica-1.log").read_text()
        third = stack.api.post("/jobs", factories.hello_world(test_image)).json()["id"]
        assert stack.api.wait(third, timeout=60)["state"] == "succeeded"


def wait_for(read, expected, stack, *, until=None, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if (until(value) if until else value == expected):
            return value
        assert time.monotonic() < deadline, f"still {value!r}\n{stack.logs()}"
        time.sleep(0.1)
