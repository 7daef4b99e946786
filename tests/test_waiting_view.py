"""Why work waits, as the API, the CLI, the job page, the overview and the nodes page show it.

The placement pass writes the reasons, placements and reservations; these tests write them on the rows
directly and read them back through each view.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from scheduler.attempts import claim_attempt, start_attempt
from scheduler.models import Attempt, Job, Node, Op
from scheduler.nodes import NodeReport, register
from protocol.messages import GpuReport
from tests import factories
from tests.factories import bearer
from tests.test_dashboard import sign_in

H100 = "NVIDIA H100 80GB HBM3"


def gpu_job(key: str, gpus: int) -> dict:
    return {"version": "0.1", "type": "container", "ops": [{
        "type": "container/run", "id": key,
        "args": {"image": "busybox", "cmd": ["true"], "gpu_count": gpus, "required_vram": 80, "timeout": 3600}}]}


@pytest.fixture
def world(client, core):
    """rig-3 with four 80 GB GPUs runs Ann's 1-GPU warm-up; her 4-GPU train waits with a reservation on
    rig-3; Bob's 1-GPU eval is placed on rig-3; his priority-5 sweep waits for his quota."""
    node_id, _, _ = factories.node(core, owner_email="prov@example.com", name="rig-3")
    _, ann = factories.user(core, email="ann@example.com")
    _, bob = factories.user(core, email="bob@example.com")
    with core.transaction() as session:
        register(session, session.get(Node, node_id), NodeReport(hostname="rig-3", cpu_count=32, memory_mb=262144, gpus=tuple(
            GpuReport(uuid=f"GPU-{i}", name=H100, index=i, memory_total_mb=81559, memory_free_mb=81000) for i in range(4))))
    ids = {}
    for owner, key, gpus in ((ann, "warmup", 1), (ann, "train", 4), (bob, "eval", 1), (bob, "sweep", 1)):
        answer = client.post("/api/v1/jobs", json=gpu_job(key, gpus), headers=bearer(owner))
        assert answer.status_code == 201, answer.json
        ids[key] = answer.json["id"]
    reserved_from = None
    with core.transaction() as session:
        def attempt(key):
            return session.scalar(select(Attempt).join(Op).where(Op.job_id == ids[key]))

        node = session.get(Node, node_id)
        claim_attempt(session, node, attempt("warmup").id, gpus=["GPU-0"])
        start_attempt(session, node, attempt("warmup").id)
        train = attempt("train")
        reserved_from = train.created_at + timedelta(hours=1)
        train.waiting = f"GPUs reserved on rig-3 from {reserved_from:%H:%M}"
        train.reserved_node_id, train.reserved_from = node_id, reserved_from
        evaluation = attempt("eval")
        evaluation.placed_node_id, evaluation.placed_gpus, evaluation.placed_at = node_id, ["GPU-1"], evaluation.created_at
        sweep = attempt("sweep")
        sweep.waiting, sweep.line_position = "your quota of 1 GPU is in use", 1
        session.get(Job, ids["sweep"]).priority = 5
    return {"ids": ids, "node_id": node_id, "ann": ann, "bob": bob, "reserved_from": reserved_from,
            "train_reason": f"GPUs reserved on rig-3 from {reserved_from:%H:%M}"}


def op_of(client, token, job_id):
    return client.get(f"/api/v1/jobs/{job_id}", headers=bearer(token)).json["ops"][0]


def iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def test_the_api_says_why_an_op_waits_and_where_it_stands(client, core, world):
    ids, node_id = world["ids"], world["node_id"]
    rig = {"id": node_id, "name": "rig-3"}

    train = op_of(client, world["ann"], ids["train"])
    assert train["state"] == "queued"
    assert train["waiting"]["reason"] == world["train_reason"]
    assert train["waiting"]["placed_on"] is None
    assert train["waiting"]["reserved"] == {"node": rig, "from": iso(world["reserved_from"])}

    # Placed, and not yet explained by a pass: it says where it goes.
    evaluation = op_of(client, world["bob"], ids["eval"])
    assert evaluation["waiting"] == {"reason": "placed on rig-3, waiting for it to start", "placed_on": rig,
                                     "reserved": None, "since": evaluation["waiting"]["since"]}
    sweep = op_of(client, world["bob"], ids["sweep"])
    assert sweep["waiting"]["reason"] == "your quota of 1 GPU is in use" and sweep["waiting"]["reserved"] is None

    # A running op does not wait.
    warmup = op_of(client, world["ann"], ids["warmup"])
    assert warmup["state"] == "running" and warmup["waiting"] is None


def test_since_is_when_the_waiting_attempt_was_made(client, core, world):
    with core.transaction() as session:
        made = session.scalar(select(Attempt.created_at).join(Op).where(Op.job_id == world["ids"]["sweep"]))
    assert op_of(client, world["bob"], world["ids"]["sweep"])["waiting"]["since"] == iso(made)


def test_the_cli_shows_each_ops_reason_and_reservation(client, world):
    from werkzeug.serving import make_server

    from cli import main

    server = make_server("127.0.0.1", 0, client.application, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"PEERGRID_TOKEN": world["ann"], "PEERGRID_SERVER": f"http://127.0.0.1:{server.port}"}
        shown = CliRunner().invoke(main, ["job", "status", str(world["ids"]["train"])], env=env)
        assert shown.exit_code == 0, shown.output
        assert re.search(rf"^  train: queued  waiting: {world['train_reason']} \(since .+ UTC\)$",
                         shown.output, re.M), shown.output
        running = CliRunner().invoke(main, ["job", "status", str(world["ids"]["warmup"])], env=env)
        assert "  warmup: running on rig-3" in running.output and "waiting" not in running.output

        env["PEERGRID_TOKEN"] = world["bob"]
        placed = CliRunner().invoke(main, ["job", "status", str(world["ids"]["eval"])], env=env)
        assert "eval: queued  waiting: placed on rig-3, waiting for it to start" in placed.output
        as_json = CliRunner().invoke(main, ["job", "status", str(world["ids"]["sweep"]), "--json"], env=env)
        assert json.loads(as_json.output)["ops"][0]["waiting"]["reason"] == "your quota of 1 GPU is in use"
    finally:
        server.shutdown()


def test_the_job_page_shows_the_reason_and_the_reservation(client, world):
    sign_in(client, "ann@example.com")
    page = client.get(f"/jobs/{world['ids']['train']}").get_data(as_text=True)
    note = re.search(r'<section class="waiting" id="waiting".*?</section>', page, re.S).group(0)
    assert f'<strong>Waiting:</strong> <span class="reason-text">{world["train_reason"]}</span>' in note
    # The reason names the reservation already, so no second line repeats it.
    assert "GPUs reserved on <strong>" not in note and "Waiting since" in note
    assert 'id="waiting"' not in client.get(f"/jobs/{world['ids']['warmup']}").get_data(as_text=True)

    sign_in(client, "bob@example.com")
    placed = client.get(f"/jobs/{world['ids']['eval']}").get_data(as_text=True)
    assert "placed on rig-3, waiting for it to start" in placed and "placed on</span> rig-3" in placed


def test_a_reservation_the_reason_leaves_out_gets_its_own_line(client, core, world):
    with core.transaction() as session:
        session.scalar(select(Attempt).join(Op).where(Op.job_id == world["ids"]["train"])).waiting = "1st in line for gpu-4x-80gb"
    sign_in(client, "ann@example.com")
    page = client.get(f"/jobs/{world['ids']['train']}").get_data(as_text=True)
    assert "1st in line for gpu-4x-80gb" in page
    assert re.search(r'GPUs reserved on <strong>rig-3</strong> from <time datetime="[^"]+"[^>]*>[^<]+ UTC</time>', page)


def test_the_overview_lists_the_queue_in_order_and_the_reservations(client, world):
    ids = world["ids"]
    sign_in(client, "bob@example.com")
    page = client.get("/").get_data(as_text=True)
    queue = re.search(r'<section id="queue">.*?</section>', page, re.S).group(0)
    one_gpu = re.search(r'id="queue-gpu-80gb".*?</table>', queue, re.S).group(0)
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>(.*?)</td>\s*<td>(.*?)</td><td class=\"num\">(-?\d+)</td>"
                      r"<td class=\"num\">(\d+)</td>", one_gpu, re.S)
    # Bob's eval, placed and about to start, first; his priority-5 sweep, first of those the pass put in
    # line, next; both his own, so both link.
    assert [(pos, owner, prio, gpus) for pos, _, owner, prio, gpus in rows] == [("1", "you", "0", "1"), ("2", "you", "5", "1")]
    assert f'href="/jobs/{ids["eval"]}"' in rows[0][1] and f'href="/jobs/{ids["sweep"]}"' in rows[1][1]
    assert "2 waiting" in one_gpu.replace("<strong>", "").replace("</strong>", "")
    # Ann's 4-GPU op: its owner's name, no link to someone else's job, and its reason.
    four = re.search(r'id="queue-gpu-4x-80gb".*?</table>', queue, re.S).group(0)
    assert f"#{ids['train']}" in four and f'href="/jobs/{ids["train"]}"' not in four
    assert "<td>ann</td>" in four and world["train_reason"] in four and '<td class="num">4</td>' in four
    # Reasons are written to the owner; others read them about the owner.
    assert "your quota of 1 GPU is in use" in one_gpu
    sign_in(client, "ann@example.com")
    assert "their quota of 1 GPU is in use" in client.get("/").get_data(as_text=True)
    reservations = re.search(r'<table class="list" id="reservations">.*?</table>', queue, re.S).group(0)
    assert "<td>rig-3</td>" in reservations and f"#{ids['train']}" in reservations and "train" in reservations


def test_the_overview_says_when_nothing_waits(client, core):
    factories.user(core, email="ann@example.com")
    sign_in(client, "ann@example.com")
    assert "Nothing waits" in client.get("/").get_data(as_text=True)


def test_the_nodes_page_shows_what_runs_on_each_gpu_and_the_reservation(client, world):
    ids = world["ids"]
    sign_in(client, "prov@example.com")
    page = client.get("/nodes").get_data(as_text=True)
    node = re.search(r'<section class="card node" id="node-\d+">.*?</section>', page, re.S).group(0)
    rows = re.findall(r"<tr><td>(\d)</td>.*?<td class=\"gpu-work\">(.*?)</td></tr>", node, re.S)
    assert len(rows) == 4
    # The provider sees that GPU 0 runs someone's op, since when and until when, not the job's page.
    assert f"an op of job #{ids['warmup']}" in rows[0][1] and "since" in rows[0][1] and "time limit" in rows[0][1]
    # GPU 1 waits for Bob's eval, placed there; the others are free.
    assert re.search(rf"starting</span> an op of job #{ids['eval']}<div class=\"muted small\">placed here at <time", rows[1][1])
    assert all("free" in work for _, work in rows[2:])
    assert re.search(rf'<p class="reserved"><strong>4 GPUs</strong> reserved from <strong><time[^>]*>[^<]+ UTC</time>'
                     rf'</strong> for job #{ids["train"]} <code>train</code>', node)


def test_an_admin_gets_links_to_the_jobs_the_nodes_run(client, core, world):
    factories.user(core, email="root@example.com", admin=True)
    sign_in(client, "root@example.com")
    page = client.get("/nodes").get_data(as_text=True)
    assert f'<a href="/jobs/{world["ids"]["warmup"]}">#{world["ids"]["warmup"]} warmup</a>' in page


def test_the_pages_in_a_browser_show_the_wait(client, core, world, browser):
    """Screenshots of the job page, the overview and the nodes page with work waiting and a reservation."""
    from werkzeug.serving import make_server

    from tests.test_browser import new_page, shoot
    from tests.test_browser import sign_in as browser_sign_in

    factories.user(core, email="root@example.com", admin=True)
    server = make_server("127.0.0.1", 0, client.application, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    live = type("Live", (), {"url": f"http://127.0.0.1:{server.port}"})
    try:
        page = new_page(browser)
        browser_sign_in(page, live, "ann@example.com")
        page.goto(f"{live.url}/jobs/{world['ids']['train']}")
        assert page.inner_text("#waiting .waiting-reason") == f"Waiting: {world['train_reason']}"
        shoot(page, "waiting-job-laptop")
        page.goto(live.url + "/")
        assert "GPUs reserved on rig-3" in page.inner_text("#queue-gpu-4x-80gb")
        shoot(page, "waiting-overview-laptop")
        phone = new_page(browser, "phone")
        browser_sign_in(phone, live, "bob@example.com")
        phone.goto(live.url + "/")
        assert "your quota of 1 GPU is in use" in phone.inner_text("#queue-gpu-80gb")
        shoot(phone, "waiting-overview-phone")
        admin = new_page(browser)
        browser_sign_in(admin, live, "root@example.com")
        admin.goto(live.url + "/nodes")
        assert "4 GPUs reserved from" in admin.inner_text("p.reserved")
        shoot(admin, "waiting-nodes-laptop")
    finally:
        server.shutdown()


def test_the_store_ranks_each_markets_line_on_sqlite_and_postgresql(database_url, tmp_path):
    from scheduler import queue_view
    from scheduler.models import Market, Usage
    from scheduler.states import utcnow

    from scheduler.placing import run_pass

    with factories.served(database_url, tmp_path) as (core, client):
        ann_id, ann = factories.user(core, email="ann@example.com")
        _, bob = factories.user(core, email="bob@example.com")
        # One node, its one GPU busy
        node_id, _, _ = factories.node(core, name="rig")
        with core.transaction() as session:
            register(session, session.get(Node, node_id), NodeReport(gpus=(
                GpuReport(uuid="GPU-0", name=H100, index=0, memory_total_mb=81559, memory_free_mb=81000),)))
        blocker = client.post("/api/v1/jobs", json=gpu_job("blocker", 1), headers=bearer(bob)).json["id"]
        with core.transaction() as session:
            attempt_id = session.scalar(select(Attempt.id).join(Op).where(Op.job_id == blocker))
            claim_attempt(session, session.get(Node, node_id), attempt_id, gpus=["GPU-0"])
        old, bobs, urgent = (client.post("/api/v1/jobs", json=gpu_job(key, 1), headers=bearer(owner)).json["id"]
                             for owner, key in ((ann, "old"), (bob, "bobs"), (ann, "urgent")))
        with core.transaction() as session:
            session.get(Job, urgent).priority = 2
            # Ann used GPUs lately, Bob used less: his op goes before her older one.
            session.add(Usage(user_id=ann_id, gpu_ms=36_000_000, as_of=utcnow()))
        with core.transaction() as session:
            run_pass(session, half_life_s=86_400, claim_within_s=5)
        with core.transaction() as session:
            market = session.scalar(select(Market.id).where(Market.slug == "gpu-80gb"))
            line = queue_view.first_in_line(session, first=2)
        assert [(i.position, i.job_id, i.priority) for i in line[market]] == [(1, urgent, 2), (2, bobs, 0)]
        assert old not in {i.job_id for i in line[market]}
