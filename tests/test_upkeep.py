"""The scheduler's upkeep: one leader through a lease in the store, a standby that takes over when
the leader is killed, no beat process to orphan, and a reaper that does not blame nodes for the
server's own outage."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest

from protocol.messages import NodeReport
from scheduler.hearing import GAP_MARKS, MARK_EVERY_S, Hearing, hearing, mark_heard
from scheduler.leadership import UPKEEP, give_up_lease, hold_lease, lease_holder
from scheduler.models import Node
from scheduler.nodes import reap_silent_nodes, register
from scheduler.states import NodeState, utcnow
from scheduler.upkeep import Upkeep
from tests import factories
from tests.factories import hello_world
from tests.outages import wait_until
from tests.stack import Stack


def test_one_process_holds_a_lease_until_it_lapses_or_is_given_up(store_core):
    now = utcnow()
    with store_core.transaction() as session:
        assert hold_lease(session, UPKEEP, "a", ttl_s=10, now=now)
        assert not hold_lease(session, UPKEEP, "b", ttl_s=10, now=now + timedelta(seconds=5))
        assert hold_lease(session, UPKEEP, "a", ttl_s=10, now=now + timedelta(seconds=5))  # renewed
        assert not hold_lease(session, UPKEEP, "b", ttl_s=10, now=now + timedelta(seconds=14))
        assert hold_lease(session, UPKEEP, "b", ttl_s=10, now=now + timedelta(seconds=16))  # a lapsed
        assert lease_holder(session, UPKEEP, now=now + timedelta(seconds=17)).holder == "b"
        give_up_lease(session, UPKEEP, "b")
        assert lease_holder(session, UPKEEP) is None
        assert hold_lease(session, UPKEEP, "a", ttl_s=10)


def test_two_upkeep_loops_on_one_store_lead_one_at_a_time(core):
    first, second = Upkeep(core, holder="first"), Upkeep(core, holder="second")
    first.step()
    second.step()
    assert (first.leading, second.leading) == (True, False)
    first.stop()  # never started: stepping by hand
    with core.transaction() as session:
        give_up_lease(session, UPKEEP, "first")
    second.step()
    assert second.leading


def test_hearing_restarts_after_a_gap_and_none_means_nobody_can_tell(core):
    now = utcnow()
    step = timedelta(seconds=MARK_EVERY_S)
    with core.transaction() as session:
        assert hearing(session, now=now) is None
        mark_heard(session, "web-1", now=now)
        mark_heard(session, "web-1", now=now + step)
        assert hearing(session, now=now + step) == Hearing(since=now, until=now + step)
        later = now + step * (GAP_MARKS + 5)
        assert hearing(session, now=later) is None  # the web stopped marking: deaf
        mark_heard(session, "web-1", now=later)
        assert hearing(session, now=later) == Hearing(since=later, until=later)  # a gap: counting anew


def test_the_reaper_counts_silence_only_while_the_server_heard(core):
    node_id, _, _ = factories.node(core)
    with core.transaction() as session:
        register(session, session.get(Node, node_id), NodeReport())
        last_beat = session.get(Node, node_id).last_heartbeat_at
    with core.transaction() as session:
        # The web died 1 s after the node's last beat; its last mark is all that was heard since.
        deaf = Hearing(since=last_beat - timedelta(hours=1), until=last_beat + timedelta(seconds=1))
        assert reap_silent_nodes(session, timeout_s=3, heard=deaf, now=last_beat + timedelta(seconds=5)) == []
        # The server came back after an outage, 10 s ago: every node has a full timeout from then.
        back = last_beat + timedelta(seconds=120)
        resumed = Hearing(since=back - timedelta(seconds=10), until=back)
        assert reap_silent_nodes(session, timeout_s=30, heard=resumed, now=back) == []
        assert session.get(Node, node_id).state != NodeState.OFFLINE
        # Heard for 31 s since it came back, and still nothing from the node: now it is silent.
        later = Hearing(since=resumed.since, until=resumed.since + timedelta(seconds=31))
        assert [n.id for n in reap_silent_nodes(session, timeout_s=30, heard=later, now=later.until)] == [node_id]


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    found = [int(p) for p in out]
    return found + [d for child in found for d in _descendants(child)]


def _holder_pid(stack: Stack) -> int | None:
    """The pid of the process holding the upkeep lease (holders are host:pid:start)."""
    with stack.core.transaction() as session:
        lease = lease_holder(session, UPKEEP)
        return int(lease.holder.split(":")[1]) if lease else None


@pytest.mark.docker
def test_a_standby_scheduler_takes_over_when_the_leader_is_killed_and_nothing_is_orphaned(
    tmp_path, sqlite_url, test_image, docker_client
):
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
               extra_env={"PEERGRID_NODE_TIMEOUT": "4"}) as stack:
        api = stack.start_with_node("rig")
        # Given two schedulers on one store, and the data dir gone from under them
        stack.spawn("scheduler-2", "scheduler", "--loglevel", "INFO")
        leader = wait_until(lambda: _holder_pid(stack), 30, "no scheduler took the upkeep lease:\n" + stack.logs())
        first, second = [p for name, p, _ in stack.processes if name.startswith("scheduler")]
        leading = {first.pid: first, second.pid: second}[leader]
        standby = second if leading is first else first
        # No beat process of its own: killing the scheduler's one process ends all of it.
        assert _descendants(leading.pid) == []

        # When the leader is killed outright
        os.kill(leading.pid, signal.SIGKILL)
        leading.wait()

        # Then the standby leads within a lease's length, and its upkeep runs: a job still flows
        wait_until(lambda: _holder_pid(stack) == standby.pid, 20, "the standby did not take over:\n" + stack.logs())
        job = api.post("/jobs", hello_world(test_image)).json()["id"]
        assert api.wait(job, timeout=60)["state"] == "succeeded", stack.logs()


@pytest.mark.docker
def test_a_web_outage_longer_than_the_node_timeout_takes_no_node_offline(tmp_path, sqlite_url, test_image, docker_client):
    with Stack(tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
               extra_env={"PEERGRID_NODE_TIMEOUT": "3"}) as stack:
        api = stack.start_with_node("rig")
        job = api.post("/jobs", hello_world(test_image, ["sh", "-c", "sleep 14; echo survived"])).json()["id"]
        api.wait(job, timeout=60, until=("running",))
        wait_until(lambda: api.get(f"/jobs/{job}")["ops"][0]["state"] == "running", 30, "the op did not start")

        # When the web is down for three node timeouts while the op runs
        stack.kill("web")
        time.sleep(9)
        stack.start_web()

        # Then the node was not blamed for the server's silence: the op's one attempt succeeds
        body = api.wait(job, timeout=60)
        assert body["state"] == "succeeded", stack.logs()
        assert [a["state"] for a in body["ops"][0]["attempts"]] == ["succeeded"]
