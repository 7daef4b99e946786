"""The node API: registering, claiming (one winner), reports fenced by attempt, finishing."""

from __future__ import annotations

import threading

import pytest

from scheduler.attempts import claim_attempt
from scheduler.errors import Conflict
from scheduler.models import Attempt, Node
from tests import factories
from tests.factories import bearer, hello_world, served

REPORT = {"hostname": "rig", "cpu_count": 8, "memory_mb": 32000, "slots": 2, "agent_version": "test"}


def submit(client, token, doc=None) -> dict:
    response = client.post("/api/v1/jobs", json=doc or hello_world("busybox"), headers=bearer(token))
    assert response.status_code == 201, response.json
    return client.get(f"/api/v1/jobs/{response.json['id']}", headers=bearer(token)).json


def first_attempt(job: dict) -> int:
    return job["ops"][0]["attempts"][-1]["id"]


def registered(client, core) -> tuple[int, str]:
    node_id, node_token, _ = factories.node(core)
    response = client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    assert response.status_code == 200, response.json
    return node_id, node_token


@pytest.fixture
def provider(client, core):
    return registered(client, core)


def test_register_answers_with_the_broker_and_markets(client, core, provider):
    _, node_token = provider
    answer = client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token)).json
    assert answer["broker_url"] == core.settings.worker_broker_url
    assert "market.cpu" in [m["queue"] for m in answer["markets"]]
    assert answer["node"]["state"] == "online"


def test_each_store_is_a_cluster_with_an_id_of_its_own_that_it_keeps(database_url, tmp_path):
    """Given two stores whose nodes are both node 1, when their nodes register (twice), then each
    store answers with its own cluster id, the same each time."""
    ids = []
    for name in ("a", "b"):
        url = database_url if name == "a" else f"sqlite:///{tmp_path / 'b.sqlite'}"
        if name == "b":
            from scheduler.migrate import upgrade

            upgrade(url)
        (tmp_path / name).mkdir()
        with served(url, tmp_path / name) as (core, client):
            node_id, node_token, _ = factories.node(core)
            first, again = (client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token)).json
                            for _ in range(2))
        assert node_id == 1 and first["node"]["id"] == 1
        assert first["cluster"]["id"] == again["cluster"]["id"]
        ids.append(first["cluster"]["id"])
    assert ids[0] != ids[1]


def test_a_user_token_is_not_a_node_token(client, core):
    _, api_token = factories.user(core)
    assert client.post("/api/v1/node/register", json=REPORT, headers=bearer(api_token)).status_code == 401


def test_the_whole_report_cycle(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    node = bearer(node_token)

    claimed = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node).json["attempt"]
    assert claimed["spec"]["image"] == "busybox"
    assert claimed["spec"]["cmd"] == ["echo", "hello", "world"]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=node).status_code == 200
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["state"] == "running"

    lines = [{"seq": 1, "stream": "stdout", "text": "hello"}, {"seq": 2, "stream": "stderr", "text": "warn"}]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": lines}, headers=node).json == {"stored": 2}
    # A retried batch is not stored twice.
    again = lines + [{"seq": 3, "stream": "stdout", "text": "world"}]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": again}, headers=node).json == {"stored": 1}

    done = client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 0}, headers=node)
    assert done.json["state"] == "succeeded"
    final = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json
    assert final["state"] == "succeeded"
    assert final["ops"][0]["exit_code"] == 0
    assert final["ops"][0]["node"]["id"] == provider[0]
    logs = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=bearer(token)).json["lines"]
    assert [(line["stream"], line["text"]) for line in logs] == [("stdout", "hello"), ("stderr", "warn"), ("stdout", "world")]


def test_the_finished_report_carries_the_last_lines_and_results_are_read_from_them(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["results"] = {"answer": "answer=(\\d+)"}
    job = submit(client, token, doc)
    attempt_id = first_attempt(job)
    node = bearer(node_token)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node)
    client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=node)
    first = [{"seq": 1, "stream": "stdout", "text": "working"}]
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": first}, headers=node).json == {"stored": 1}

    # The worker sends the lines printed since its last batch with how the attempt ended: one request.
    last = [{"seq": 1, "stream": "stdout", "text": "working"}, {"seq": 2, "stream": "stdout", "text": "answer=42"}]
    done = client.post(
        f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 0, "lines": last}, headers=node
    )
    assert done.json["state"] == "succeeded"
    final = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json
    assert final["ops"][0]["results"] == {"answer": ["answer=42", "42"]}
    logs = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=bearer(token)).json["lines"]
    assert [line["text"] for line in logs] == ["working", "answer=42"]


def test_a_non_zero_exit_fails_the_job_with_the_code(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))

    client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 3}, headers=bearer(node_token))

    op = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]
    assert op["state"] == "failed" and op["exit_code"] == 3
    assert op["error"] == "The container exited with code 3."


def test_a_failed_op_with_tries_left_gets_a_new_attempt(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["restart_policy"] = {"policy": "on-failure", "restart_tries": 1}
    job = submit(client, token, doc)
    first = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{first}/claim", headers=bearer(node_token))
    answer = client.post(f"/api/v1/node/attempts/{first}/finished", json={"exit_code": 1}, headers=bearer(node_token))

    # The new attempt is handed straight back to the node, the only one, claimed for it in the answer
    op = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]
    assert op["state"] == "queued"
    assert [a["state"] for a in op["attempts"]] == ["failed", "claimed"]
    second = op["attempts"][1]["id"]
    assert [order["id"] for order in answer.json["next"]] == [second]
    client.post(f"/api/v1/node/attempts/{second}/finished", json={"exit_code": 0}, headers=bearer(node_token))
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["state"] == "succeeded"


def test_a_second_claim_loses(client, core, provider):
    _, node_token = provider
    _, other_token = registered(client, core)
    _, token = factories.user(core)
    attempt_id = first_attempt(submit(client, token))

    assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 200
    lost = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(other_token))
    assert lost.status_code == 409 and "claimed" in lost.json["error"]
    assert client.post("/api/v1/node/attempts/424242/claim", headers=bearer(node_token)).status_code == 404


def test_a_node_that_never_registered_takes_no_work(client, core):
    _, node_token, _ = factories.node(core)
    _, token = factories.user(core)
    attempt_id = first_attempt(submit(client, token))
    refused = client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
    assert refused.status_code == 409 and "offline" in refused.json["error"]


def test_reports_about_an_attempt_that_is_not_the_nodes_are_refused(client, core, provider):
    _, node_token = provider
    _, other_token = registered(client, core)
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))

    for path, body in (("started", {}), ("logs", {"lines": []}), ("finished", {"exit_code": 0})):
        response = client.post(f"/api/v1/node/attempts/{attempt_id}/{path}", json=body, headers=bearer(other_token))
        assert response.status_code == 409, path

    # Once cancelled, the attempt is no longer the claimant's either, and its heartbeat says stop.
    client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=bearer(token))
    late = client.post(f"/api/v1/node/attempts/{attempt_id}/logs", json={"lines": []}, headers=bearer(node_token))
    assert late.status_code == 409
    beat = client.post("/api/v1/node/heartbeat", json={**REPORT, "running": [attempt_id]}, headers=bearer(node_token))
    assert beat.json["cancel"] == [attempt_id]


def test_a_heartbeat_names_only_the_nodes_own_ended_jobs_of_those_it_keeps_volumes_of(database_url, tmp_path):
    """Given a job node A ran to its end, one A ran that still runs, one B ran to its end and one
    nobody ran, when each node asks about all four, then each hears only of its own ended job."""
    with served(database_url, tmp_path) as (core, client):
        _, token = factories.user(core)
        (_, a), (_, b) = registered(client, core), registered(client, core)
        jobs = []
        for node, ends in ((a, True), (a, False), (b, True)):
            # Each submitted only now, so that no finished report hands it to the node that just finished
            jobs.append(job := submit(client, token))
            attempt_id = first_attempt(job)
            client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node))
            client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=bearer(node))
            if ends:
                client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 0}, headers=bearer(node))
        jobs.append(submit(client, token))
        client.post(f"/api/v1/jobs/{jobs[3]['id']}/cancel", headers=bearer(token))  # ended, ran nowhere
        asked = [job["id"] for job in jobs] + [10**9]

        beats = {name: client.post("/api/v1/node/heartbeat", json={**REPORT, "volume_jobs": asked}, headers=bearer(node))
                 for name, node in (("a", a), ("b", b))}
        quiet = client.post("/api/v1/node/heartbeat", json=REPORT, headers=bearer(a))
        too_many = client.post("/api/v1/node/heartbeat", json={**REPORT, "volume_jobs": list(range(1, 1002))},
                               headers=bearer(a))
        not_ids = client.post("/api/v1/node/heartbeat", json={**REPORT, "volume_jobs": ["1"]}, headers=bearer(a))

        assert beats["a"].json["ended_jobs"] == [jobs[0]["id"]]
        assert beats["b"].json["ended_jobs"] == [jobs[2]["id"]]
        assert quiet.json["ended_jobs"] == []
        assert too_many.status_code == 400 and "at most 1000 job ids" in too_many.json["error"]
        assert not_ids.status_code == 400


def test_heartbeats_keep_the_gpu_inventory(client, core, provider):
    _, node_token = provider
    gpu = {"uuid": "GPU-1", "name": "NVIDIA A100", "memory_total_mb": 81920, "memory_free_mb": 80000, "index": 0}
    client.post("/api/v1/node/heartbeat", json={**REPORT, "gpus": [gpu], "simulated": True}, headers=bearer(node_token))
    client.post("/api/v1/node/heartbeat", json={**REPORT, "gpus": [{**gpu, "memory_free_mb": 1}], "simulated": True},
                headers=bearer(node_token))
    with core.sessions() as session:
        node = session.get(Node, provider[0])
        assert [(g.uuid, g.memory_free_mb) for g in node.gpus] == [("GPU-1", 1)]
        assert node.simulated and node.last_heartbeat_at is not None


def test_exactly_one_of_many_concurrent_claimants_wins(database_url, tmp_path):
    """Given one queued attempt and eight nodes, when all claim at once, then one wins."""
    with served(database_url, tmp_path) as (core, client):
        _, token = factories.user(core)
        attempt_id = first_attempt(submit(client, token))
        nodes = [registered(client, core)[0] for _ in range(8)]
        barrier = threading.Barrier(len(nodes))
        winners, losers = [], []

        def claim(node_id: int) -> None:
            session = core.sessions()
            try:
                node = session.get(Node, node_id)
                barrier.wait()
                claim_attempt(session, node, attempt_id)
                session.commit()
                winners.append(node_id)
            except Conflict:
                session.rollback()
                losers.append(node_id)
            finally:
                session.close()

        threads = [threading.Thread(target=claim, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        assert len(winners) == 1 and len(losers) == 7
        job = client.get("/api/v1/jobs", headers=bearer(token)).json["jobs"][0]
        attempt = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]["attempts"][0]
        assert attempt["state"] == "claimed" and attempt["node"]["id"] == winners[0]


def test_an_attempts_log_stops_at_its_limit_with_one_line_saying_so(database_url, tmp_path):
    """Given a 100-byte log limit, when a running op prints past it, then one line says so, the
    rest is discarded, the node is told, and the op still ends as its container does."""
    with served(database_url, tmp_path, PEERGRID_MAX_LOG_BYTES_PER_ATTEMPT="100") as (core, client):
        _, token = factories.user(core)
        job = submit(client, token)
        attempt_id = first_attempt(job)
        node = bearer(registered(client, core)[1])
        client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=node)
        client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=node)
        logs = f"/api/v1/node/attempts/{attempt_id}/logs"

        def line(seq: int) -> dict:
            return {"seq": seq, "stream": "stdout", "text": f"{seq:02d}" + "é" * 19}  # 40 bytes of UTF-8

        assert client.post(logs, json={"lines": [line(1)]}, headers=node).json == {"stored": 1}
        # 40 + 40 fit in 100 bytes; the third line does not, and a line saying so takes its place.
        crossing = client.post(logs, json={"lines": [line(2), line(3), line(4)]}, headers=node)
        assert crossing.json == {"stored": 2, "log_full": True}
        later = client.post(logs, json={"lines": [line(5), line(6)]}, headers=node)
        assert later.status_code == 200 and later.json == {"stored": 0, "log_full": True}
        done = client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 0}, headers=node)
        assert done.json["state"] == "succeeded"

        stored = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=bearer(token)).json["lines"]
        assert [line["text"] for line in stored[:2]] == [line(1)["text"], line(2)["text"]]
        assert len(stored) == 3 and stored[-1]["stream"] == "system"
        assert stored[-1]["text"] == (
            "[peergrid] The log of this attempt passed the 100 bytes limit; later lines were discarded. "
            "The op keeps running."
        )
        body = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json
        assert body["state"] == "succeeded"
        assert [e["kind"] for e in body["events"]].count("log_full") == 1
        with core.transaction() as session:
            attempt = session.get(Attempt, attempt_id)
            assert attempt.log_full and attempt.log_bytes == 80 + len(stored[-1]["text"].encode())


def test_an_output_over_the_limit_is_refused_with_a_clear_message(client, core, provider, app):
    _, node_token = provider
    _, token = factories.user(core)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["output"] = "/out"
    attempt_id = first_attempt(submit(client, token, doc))
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
    object.__setattr__(core.settings, "max_artifact_bytes", 1024 * 1024)

    too_big = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"x" * (1024 * 1024 + 1),
                         headers=bearer(node_token))
    assert too_big.status_code == 413
    assert "larger than the 1 MB limit" in too_big.json["error"]

    damaged = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"abc",
                         headers={**bearer(node_token), "X-Checksum-Sha256": "0" * 64})
    assert damaged.status_code == 400 and "checksum" in damaged.json["error"]

    import hashlib

    good = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"abc",
                      headers={**bearer(node_token), "X-Checksum-Sha256": hashlib.sha256(b"abc").hexdigest()})
    assert good.status_code == 201 and good.json["size"] == 3
    again = client.put(f"/api/v1/node/attempts/{attempt_id}/artifact", data=b"abc", headers=bearer(node_token))
    assert again.status_code == 409
    leftovers = list((core.settings.data_dir / "artifacts").rglob("*.part"))
    assert leftovers == []


def gpu_node(client, core, *gpus: tuple[str, int], slots: int = 1) -> tuple[int, str]:
    node_id, node_token, _ = factories.node(core)
    report = {**REPORT, "slots": slots, "simulated": True, "gpus": [
        {"uuid": uuid, "name": "NVIDIA A100-SXM4-80GB", "memory_total_mb": mb, "index": i}
        for i, (uuid, mb) in enumerate(gpus)]}
    assert client.post("/api/v1/node/register", json=report, headers=bearer(node_token)).status_code == 200
    return node_id, node_token


def gpu_job(client, token, **args) -> int:
    doc = hello_world("busybox")
    doc["ops"][0]["args"].update(args)
    return first_attempt(submit(client, token, doc))


def test_a_gpu_claim_must_name_free_fitting_gpus_of_the_node(client, core):
    _, token = factories.user(core)
    _, node = gpu_node(client, core, ("GPU-a", 81920), ("GPU-b", 81920), ("GPU-small", 16000))
    _, other = gpu_node(client, core, ("GPU-x", 81920))
    first = gpu_job(client, token, gpu=True, required_vram=80)
    second = gpu_job(client, token, gpu=True, required_vram=80)

    def claim(attempt, gpus, who=node):
        return client.post(f"/api/v1/node/attempts/{attempt}/claim", json={"gpus": gpus}, headers=bearer(who))

    assert claim(first, []).status_code == 409  # a GPU market needs its GPUs named
    assert "needs 1 distinct GPU" in claim(first, ["GPU-a", "GPU-b"]).json["error"]
    assert "not one node" in claim(first, ["GPU-x"]).json["error"]
    assert "does not meet" in claim(first, ["GPU-small"]).json["error"]
    won = claim(first, ["GPU-a"])
    assert won.status_code == 200 and won.json["attempt"]["gpus"] == ["GPU-a"]
    assert "already running another op" in claim(second, ["GPU-a"]).json["error"]
    assert claim(second, ["GPU-b"]).status_code == 200


def test_cpu_claims_stop_at_the_nodes_slots(client, core):
    _, token = factories.user(core)
    _, node = gpu_node(client, core, slots=1)
    first, second = first_attempt(submit(client, token)), first_attempt(submit(client, token))
    assert client.post(f"/api/v1/node/attempts/{first}/claim", headers=bearer(node)).status_code == 200
    full = client.post(f"/api/v1/node/attempts/{second}/claim", headers=bearer(node))
    assert full.status_code == 409 and "no free CPU slot" in full.json["error"]


def test_a_drained_node_takes_nothing_new_and_can_come_back(client, core):
    node_id, node_token, owner_token = factories.node(core)
    client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    _, stranger = factories.user(core)

    assert client.post(f"/api/v1/nodes/{node_id}/drain", headers=bearer(stranger)).status_code == 404
    drained = client.post(f"/api/v1/nodes/{node_id}/drain", headers=bearer(owner_token))
    assert drained.json["state"] == "draining"
    beat = client.post("/api/v1/node/heartbeat", json=REPORT, headers=bearer(node_token))
    assert beat.json["state"] == "draining"  # heartbeats do not undo a drain
    attempt = first_attempt(submit(client, owner_token))
    refused = client.post(f"/api/v1/node/attempts/{attempt}/claim", headers=bearer(node_token))
    assert refused.status_code == 409 and "draining" in refused.json["error"]

    back = client.post(f"/api/v1/nodes/{node_id}/drain", json={"drain": False}, headers=bearer(owner_token))
    assert back.json["state"] == "online"
    assert client.post(f"/api/v1/node/attempts/{attempt}/claim", headers=bearer(node_token)).status_code == 200


def test_the_reaper_loses_a_silent_nodes_attempts_and_offers_them_again(client, core, provider):
    """Given a node running an op, when it falls silent past the timeout, then it goes offline,
    its attempt is lost (unbilled, not counted as a try) and a new attempt is offered."""
    from datetime import timedelta

    from scheduler.nodes import reap_silent_nodes
    from scheduler.states import utcnow

    node_id, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
    client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=bearer(node_token))

    with core.transaction() as session:
        assert reap_silent_nodes(session, timeout_s=30) == []  # it just spoke
        reaped = reap_silent_nodes(session, timeout_s=30, now=utcnow() + timedelta(seconds=31))
        assert [n.id for n in reaped] == [node_id]

    op = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]
    assert [a["state"] for a in op["attempts"]] == ["lost", "queued"]
    assert op["attempts"][0]["cost"] == 0
    assert op["state"] == "queued"
    late = client.post(f"/api/v1/node/attempts/{attempt_id}/finished", json={"exit_code": 0}, headers=bearer(node_token))
    assert late.status_code == 409  # the fencing token: reports from the old attempt are refused


def test_a_heartbeat_reconciles_what_the_node_holds_both_ways(client, core):
    """Given a node holding four attempts, when its heartbeat says it runs one, keeps the outcome of
    another, and says nothing of a third claimed long ago nor of a fourth claimed just now, then
    the third is lost (not billed, offered again) and the rest are still its own; an attempt it
    runs that is no longer its own it is told to stop."""
    from datetime import timedelta

    from protocol.messages import NodeReport
    from scheduler.attempts import claim_attempt
    from scheduler.nodes import heartbeat
    from scheduler.states import utcnow

    node_id, node_token, _ = factories.node(core)
    client.post("/api/v1/node/register", json={**REPORT, "slots": 8}, headers=bearer(node_token))
    _, token = factories.user(core)
    jobs = [submit(client, token) for _ in range(5)]
    runs, kept, forgotten, fresh, cancelled = (first_attempt(job) for job in jobs)
    for attempt_id in (runs, kept, forgotten, cancelled):
        assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 200
    client.post(f"/api/v1/jobs/{jobs[4]['id']}/cancel", headers=bearer(token))
    later = utcnow() + timedelta(seconds=30)
    with core.transaction() as session:
        node = session.get(Node, node_id)
        claim_attempt(session, node, fresh, now=later - timedelta(seconds=1))

    with core.transaction() as session:
        answer = heartbeat(
            session, session.get(Node, node_id), NodeReport(slots=8, running=(runs, cancelled), undelivered=(kept,)),
            heartbeat_interval_s=2, now=later,
        )

    assert answer.cancel == (cancelled,)
    assert sorted(answer.time_limits) == sorted([runs, kept, fresh])
    states = {job["id"]: [a["state"] for a in client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json[
        "ops"][0]["attempts"]] for job in jobs[:4]}
    assert list(states.values()) == [["claimed"], ["claimed"], ["lost", "queued"], ["claimed"]]
    lost = client.get(f"/api/v1/jobs/{jobs[2]['id']}", headers=bearer(token)).json["ops"][0]["attempts"][0]
    assert lost["cost"] == 0 and "no longer runs it" in lost["error"]


def test_a_restarted_worker_loses_what_it_held(client, core, provider):
    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))

    client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))

    attempts = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]["attempts"]
    assert [a["state"] for a in attempts] == ["lost", "queued"]
    assert "restarted" in attempts[0]["error"]


def test_an_attempt_given_back_is_offered_again_at_once_unbilled_and_is_no_try(client, core, provider):
    """Given an op that allows one try, when its node gives its attempt back more often than an op
    may lose nodes, then each attempt is released, unbilled, with its last lines kept, and a new
    attempt is offered each time; a node cannot give back what is not its own."""
    from scheduler.orchestration import MAX_LOST_ATTEMPTS

    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    for n in range(MAX_LOST_ATTEMPTS + 1):
        attempt_id = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]["attempts"][-1]["id"]
        client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token))
        client.post(f"/api/v1/node/attempts/{attempt_id}/started", headers=bearer(node_token))
        body = {"reason": "its worker was stopped", "lines": [{"seq": 1, "stream": "stdout", "text": f"try {n}"}]}
        released = client.post(f"/api/v1/node/attempts/{attempt_id}/release", json=body, headers=bearer(node_token))
        assert released.status_code == 200 and released.json["state"] == "released"

    again = client.post(f"/api/v1/node/attempts/{attempt_id}/release", json={}, headers=bearer(node_token))
    assert again.status_code == 409
    op = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]
    assert [a["state"] for a in op["attempts"]] == ["released"] * (MAX_LOST_ATTEMPTS + 1) + ["queued"]
    assert op["state"] == "queued"  # the op allows one try (hello_world sets no retries)
    first = op["attempts"][0]
    assert first["cost"] == 0 and "Not billed" in first["cost_note"]
    assert first["error"] == f"Unfinished, given back by node {first['node']['name']}: its worker was stopped"
    logs = client.get(f"/api/v1/jobs/{job['id']}/logs", headers=bearer(token)).json["lines"]
    assert [line["text"] for line in logs] == [f"try {n}" for n in range(MAX_LOST_ATTEMPTS + 1)]


def test_an_op_that_keeps_losing_nodes_fails_in_the_end(client, core):
    from scheduler.orchestration import MAX_LOST_ATTEMPTS

    _, token = factories.user(core)
    job = submit(client, token)
    for _ in range(MAX_LOST_ATTEMPTS):
        _, node_token = registered(client, core)
        attempt_id = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]["attempts"][-1]["id"]
        assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 200
        client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token))
    body = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json
    assert body["state"] == "failed"
    assert [a["state"] for a in body["ops"][0]["attempts"]] == ["lost"] * MAX_LOST_ATTEMPTS


def test_a_duplicated_offer_changes_nothing(client, core, provider):
    from scheduler.models import Attempt
    from scheduler.offers import offer_for

    _, node_token = provider
    _, token = factories.user(core)
    job = submit(client, token)
    attempt_id = first_attempt(job)
    with core.sessions() as session:
        offer = offer_for(session.get(Attempt, attempt_id), node_id=provider[0])
    core.publisher.publish([offer, offer])  # the broker delivers it twice

    assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 200
    assert client.post(f"/api/v1/node/attempts/{attempt_id}/claim", headers=bearer(node_token)).status_code == 409
    attempts = client.get(f"/api/v1/jobs/{job['id']}", headers=bearer(token)).json["ops"][0]["attempts"]
    assert len(attempts) == 1 and attempts[0]["state"] == "claimed"


def test_every_attempt_is_offered_when_it_is_made_and_the_store_holds_it_to_that(client, core):
    """offered_at is when the offer was staged, never empty: re-offers are found by its age alone."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    _, token = factories.user(core)
    attempt_id = first_attempt(submit(client, token))
    with core.transaction() as session:
        attempt = session.get(Attempt, attempt_id)
        assert attempt.offered_at is not None and attempt.offered_at == attempt.created_at
    with pytest.raises(IntegrityError):
        with core.transaction() as session:
            session.execute(text("UPDATE attempts SET offered_at = NULL WHERE id = :id"), {"id": attempt_id})
