"""Heartbeats write only what changed; their heard times wait in a web process's buffer, and the
reaper still takes silent nodes, and only those, offline."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from protocol.messages import NodeReport
from scheduler.hearing import Ears, hearing
from scheduler.last_seen import SeenBuffer, write_batch
from scheduler.models import Listener, Node, NodeGpu
from scheduler.nodes import heartbeat, reap_silent_nodes
from scheduler.placing import take_wanted
from scheduler.states import NodeState, utcnow
from tests import factories
from tests.factories import bearer
from tests.test_queries import statements

GPU = {"uuid": "GPU-1", "index": 0, "name": "NVIDIA A100", "memory_total_mb": 81920, "memory_free_mb": 80000,
       "compute_capability": "8.0", "cuda_version": "12.4", "driver_version": "550.54", "utilization_pct": 3,
       "temperature_c": 40}
REPORT = {"hostname": "rig", "cpu_count": 8, "memory_mb": 32000, "slots": 2, "agent_version": "test",
          "simulated": True, "gpus": [GPU]}




def writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s.lstrip().split(None, 1)[0].upper() in ("UPDATE", "INSERT", "DELETE")]


@pytest.fixture
def ears(app, core):
    """The buffer of a serving web process, whose hearing thread the test drives by hand (mark)."""
    ears = Ears(core, "test-listener")
    app.extensions["peergrid.ears"] = ears
    yield ears
    app.extensions.pop("peergrid.ears")


@pytest.fixture
def node(client, core):
    node_id, node_token, _ = factories.node(core)
    assert client.post("/api/v1/node/register", json=REPORT, headers=bearer(node_token)).status_code == 200
    return node_id, node_token


def beat(client, token, report=REPORT):
    response = client.post("/api/v1/node/heartbeat", json=report, headers=bearer(token))
    assert response.status_code == 200, response.json
    return response.json


def stored(core, node_id):
    with core.sessions() as session:
        row = session.get(Node, node_id)
        return row.state, row.last_heartbeat_at, [
            (g.uuid, g.memory_total_mb, g.memory_free_mb, g.utilization_pct, g.temperature_c) for g in row.gpus
        ]


def test_a_heartbeat_that_changes_nothing_writes_nothing_until_the_mark_writes_its_time(client, core, node, ears):
    """Given a node whose report matches the store, when it heartbeats in a serving process, then
    the store sees no write at all; the process's next mark writes the time it was heard, no later
    than the mark's own time."""
    node_id, token = node
    _, registered_at, gpus = stored(core, node_id)
    with statements(core) as seen:
        answer = beat(client, token)
    assert answer["state"] == "online"
    assert writes(seen) == []
    assert stored(core, node_id)[1] == registered_at

    ears.mark()
    _, heard_at, after = stored(core, node_id)
    with core.sessions() as session:
        alive_at = session.get(Listener, "test-listener").alive_at
    assert registered_at < heard_at <= alive_at
    assert after == gpus


def test_without_a_hearing_thread_only_the_heard_time_is_written(client, core, node):
    node_id, token = node
    with statements(core) as seen:
        beat(client, token)
    assert len(writes(seen)) == 1 and "last_heartbeat_at" in writes(seen)[0] and "node_gpus" not in writes(seen)[0]


def test_readings_wait_for_the_mark_and_facts_are_written_at_once(client, core, node, ears):
    """Temperature, use and free memory change all the time and decide nothing: batched. A GPU's
    memory decides where work goes: written with the heartbeat."""
    node_id, token = node
    warmer = {**GPU, "temperature_c": 71, "utilization_pct": 99, "memory_free_mb": 100}
    with statements(core) as seen:
        beat(client, token, {**REPORT, "gpus": [warmer]})
    assert writes(seen) == []
    ears.mark()
    assert stored(core, node_id)[2] == [("GPU-1", 81920, 100, 99, 71)]

    with statements(core) as seen:
        beat(client, token, {**REPORT, "gpus": [{**warmer, "memory_total_mb": 40960, "temperature_c": 72}]})
    assert [s.split()[1] for s in writes(seen)] == ["node_gpus"]
    assert stored(core, node_id)[2] == [("GPU-1", 40960, 100, 99, 72)]


def test_readings_back_to_what_is_stored_drop_what_the_buffer_held(client, core, node, ears):
    node_id, token = node
    beat(client, token, {**REPORT, "gpus": [{**GPU, "temperature_c": 90}]})
    beat(client, token)  # back to the stored 40 before the mark
    ears.mark()
    assert stored(core, node_id)[2][0][4] == 40


@pytest.mark.parametrize(
    "change, asks",
    [
        ({"gpus": [GPU, {**GPU, "uuid": "GPU-2", "index": 1}]}, True),  # a GPU appears
        ({"gpus": []}, True),  # it vanishes
        ({"gpus": [{**GPU, "memory_total_mb": 24576}]}, True),  # its VRAM changes
        ({"slots": 4}, True),
        ({"serves_endpoints": False}, True),
        ({"gpus": [{**GPU, "utilization_pct": 80, "temperature_c": 66, "memory_free_mb": 5}]}, False),
        ({"hostname": "rig-renamed"}, False),
        ({}, False),
    ],
)
def test_a_heartbeat_asks_for_a_placement_pass_when_what_placement_reads_changes(client, core, node, change, asks):
    node_id, _ = node
    with core.transaction() as session:
        heartbeat(session, session.get(Node, node_id), NodeReport.from_wire({**REPORT, **change}), seen=SeenBuffer())
        assert take_wanted(session) is asks
    with core.sessions() as session:
        gpus = session.scalars(select(NodeGpu.uuid).where(NodeGpu.node_id == node_id).order_by(NodeGpu.index)).all()
    assert gpus == [g["uuid"] for g in change.get("gpus", REPORT["gpus"])]


def test_a_node_coming_back_online_is_written_with_its_time_and_asks_for_a_pass(client, core, node, ears):
    """A state change writes the row at once, heard time included: the reaper must not see the node
    online with the old time of its silence."""
    node_id, token = node
    with core.transaction() as session:
        reaped = reap_silent_nodes(session, timeout_s=30, now=utcnow() + timedelta(seconds=31))
        assert [n.id for n in reaped] == [node_id]
    before = utcnow()
    with core.transaction() as session:
        answer = heartbeat(session, session.get(Node, node_id), NodeReport.from_wire(REPORT), seen=ears.seen)
        assert take_wanted(session)
    state, heard_at, _ = stored(core, node_id)
    assert answer.state == "online" and state == NodeState.ONLINE and heard_at >= before


def test_a_heartbeat_still_in_a_buffer_keeps_its_node_online_and_a_silent_one_goes(client, core):
    """Given two web processes, one that marked 2 s ago and holds a node's latest heartbeat unwritten,
    and one that marked just now; when the reaper runs, then the node heard only through the buffer
    stays online and the node heard by nobody for 40 s goes offline; once the buffer is written, the
    first one's time is current."""
    timeout = 30
    heard_id, heard_token, _ = factories.node(core)
    silent_id, silent_token, _ = factories.node(core)
    for token in (heard_token, silent_token):
        assert client.post("/api/v1/node/register", json=REPORT, headers=bearer(token)).status_code == 200
    now = utcnow()
    buffer = SeenBuffer()
    with core.transaction() as session:
        session.execute(update(Node).where(Node.id == heard_id).values(last_heartbeat_at=now - timedelta(seconds=31)))
        session.execute(update(Node).where(Node.id == silent_id).values(last_heartbeat_at=now - timedelta(seconds=40)))
        session.add(Listener(id="buffered", alive_at=now - timedelta(seconds=2), since=now - timedelta(minutes=5)))
        session.add(Listener(id="current", alive_at=now, since=now - timedelta(minutes=5)))
    buffer.note(heard_id, {})  # heard after the buffered process's mark, written at its next one

    with core.transaction() as session:
        heard = hearing(session, now=now)
        reaped = reap_silent_nodes(session, timeout_s=timeout, heard=heard, now=now)
    assert [n.id for n in reaped] == [silent_id]
    assert stored(core, heard_id)[0] == NodeState.ONLINE

    with core.transaction() as session:
        write_batch(session.connection(), buffer.take())
    assert stored(core, heard_id)[1] >= now
    with core.transaction() as session:
        later = now + timedelta(seconds=3)
        assert reap_silent_nodes(session, timeout_s=timeout, heard=hearing(session, now=later), now=later) == []


def test_a_batch_moves_heard_times_only_forward_and_one_that_fails_is_kept(core):
    node_id, _, _ = factories.node(core)
    ahead = utcnow() + timedelta(hours=1)
    with core.transaction() as session:
        session.execute(update(Node).where(Node.id == node_id).values(last_heartbeat_at=ahead))
    buffer = SeenBuffer()
    buffer.note(node_id, {})
    batch = buffer.take()
    with core.transaction() as session:
        write_batch(session.connection(), batch)
    assert stored(core, node_id)[1] == ahead

    buffer.put_back(batch)
    assert buffer.take().seen == batch.seen
