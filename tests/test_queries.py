"""How many statements a request runs: pages and lists must not run one more per row they show."""

from __future__ import annotations

import re
from contextlib import contextmanager

from sqlalchemy import event

from tests import factories
from tests.factories import bearer, hello_world
from tests.test_dashboard import sign_in


@contextmanager
def statements(core):
    seen: list[str] = []

    def tally(_conn, _cursor, statement, *_):
        seen.append(statement)

    event.listen(core.engine, "before_cursor_execute", tally)
    try:
        yield seen
    finally:
        event.remove(core.engine, "before_cursor_execute", tally)


def counted(core, call) -> int:
    call()  # once to warm what is cached per process
    with statements(core) as seen:
        response = call()
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return len(seen)


def submit(client, token: str, count: int) -> None:
    for _ in range(count):
        assert client.post("/api/v1/jobs", json=hello_world("busybox"), headers=bearer(token)).status_code == 201


def test_job_lists_and_the_overview_run_as_many_statements_for_25_jobs_as_for_2(client, core):
    # Given a person with two jobs
    email = "many@example.com"
    _, token = factories.user(core, email=email, credits=10_000)
    sign_in(client, email)
    submit(client, token, 2)
    requests = {
        "API list": lambda: client.get("/api/v1/jobs", headers=bearer(token)),
        "jobs page": lambda: client.get("/jobs"),
        "overview": lambda: client.get("/"),
    }
    few = {name: counted(core, call) for name, call in requests.items()}
    # When they have a full page of jobs
    submit(client, token, 23)
    many = {name: counted(core, call) for name, call in requests.items()}
    # Then no request runs a statement per job
    assert many == few


def test_the_overview_counts_gpus_and_nodes_by_model_in_a_fixed_number_of_statements(client, core):
    from scheduler.nodes import GpuReport, NodeReport, register
    from scheduler.models import Node

    email = "watcher@example.com"
    factories.user(core, email=email)
    sign_in(client, email)

    def add_nodes(count: int) -> None:
        for _ in range(count):
            node_id, _, _ = factories.node(core)
            with core.transaction() as session:
                gpus = tuple(GpuReport(index=k, uuid=f"GPU-{node_id}-{k}", name="NVIDIA L4") for k in range(2))
                register(session, session.get(Node, node_id), NodeReport(gpus=gpus, simulated=True))

    add_nodes(1)
    few = counted(core, lambda: client.get("/"))
    add_nodes(6)
    page = client.get("/").get_data(as_text=True)
    assert counted(core, lambda: client.get("/")) == few
    # Then seven nodes of two GPUs each show as 14 GPUs on 7 nodes
    assert re.search(r'NVIDIA L4 <span class="tag sim">simulated</span></td><td class="num">14</td><td class="num">7</td>', page)


def test_a_submit_runs_a_bounded_number_of_statements(client, core):
    _, token = factories.user(core, credits=10_000)
    submit(client, token, 1)
    with statements(core) as seen:
        submit(client, token, 1)
    # Token, user, markets, whether a waiting quota applies; the job and its op; the escrow; the
    # attempt and its events.
    assert len(seen) <= 23, "\n".join(s.split("\n")[0][:120] for s in seen)


def test_a_heartbeat_runs_four_statements_and_three_where_its_time_is_batched(app, client, core):
    from scheduler.hearing import Ears

    _, node_token, _ = factories.node(core)
    report = {"gpus": [{"index": 0, "uuid": "GPU-0", "name": "NVIDIA L4"}], "simulated": True, "running": []}
    client.post("/api/v1/node/register", json=report, headers=bearer(node_token))
    beat = lambda: client.post("/api/v1/node/heartbeat", json=report, headers=bearer(node_token))  # noqa: E731
    # The node by its token with its GPUs, its held attempts, the update of its last heartbeat, and
    # the live gateways (which the answer carries, so the node follows them).
    assert counted(core, beat) == 4
    # A serving process's hearing thread writes the heard time in its next mark (scheduler.last_seen).
    app.extensions["peergrid.ears"] = Ears(core, "test")
    assert counted(core, beat) == 3
