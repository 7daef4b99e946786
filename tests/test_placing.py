"""Placement passes on a real store: where a pass puts waiting attempts, the offers it sends to the
nodes' own queues, reasons to wait, withdrawn offers, claims checked against the placement, and the
hand-off of a node's next work with a finished report."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from protocol.messages import GpuReport, NodeReport, node_queue
from scheduler.attempts import claim_attempt
from scheduler.errors import Conflict
from scheduler.models import Attempt, Market, Node, User
from scheduler.nodes import register
from scheduler import placing
from scheduler.placing import run_pass
from scheduler.states import NodeState, utcnow
from tests import factories
from tests.factories import hello_world
from tests.test_api import offers_on

A100 = dict(name="NVIDIA A100-SXM4-80GB", memory_total_mb=81920, memory_free_mb=81920)


def gpu_node(core, name: str, gpus: int) -> int:
    node_id, _, _ = factories.node(core, name=name)
    report = NodeReport(slots=1, simulated=True, gpus=tuple(
        GpuReport(uuid=f"GPU-{name}-{i}", index=i, **A100) for i in range(gpus)))
    with core.transaction() as session:
        register(session, session.get(Node, node_id), report)
    return node_id


def gpu_market(core, slug: str, gpus: int) -> None:
    with core.transaction() as session:
        session.add(Market(slug=slug, name=slug, queue=f"market.{slug}", gpu_count=gpus, min_vram_mb=40_000,
                           price_per_second=10))


def submit(core, user_id: int, *, market: str, priority: int = 0) -> int:
    from scheduler.jobs import submit_job

    doc = hello_world("busybox")
    with core.sessions() as session:
        doc["ops"][0]["args"]["gpu_count"] = session.scalar(select(Market.gpu_count).where(Market.slug == market))
    with core.transaction() as session:
        job = submit_job(session, session.get(User, user_id), doc, market_slug=market, default_timeout_s=60)
        job.priority = priority
        return job.ops[0].attempts[0].id


def place(core, *, now=None, claim_within_s: float = 5):
    with core.transaction() as session:
        return run_pass(session, half_life_s=3600, claim_within_s=claim_within_s, now=now)


def attempt(core, attempt_id: int) -> Attempt:
    with core.sessions() as session:
        found = session.get(Attempt, attempt_id)
        session.expunge(found)
        return found


def test_a_pass_places_on_fitting_gpus_and_offers_on_that_nodes_queue_alone(core):
    gpu_market(core, "a100x2", 2)
    small, big = gpu_node(core, "small", 1), gpu_node(core, "big", 4)
    user_id, _ = factories.user(core, credits=1_000_000)
    first, second, third = (submit(core, user_id, market="a100x2") for _ in range(3))

    result = place(core)

    assert (result.placed, result.waiting) == (2, 1)
    placed = [attempt(core, a) for a in (first, second)]
    assert {a.placed_node_id for a in placed} == {big}  # the 1-GPU node cannot take a 2-GPU op
    assert len({g for a in placed for g in a.placed_gpus}) == 4
    assert attempt(core, third).waiting.startswith("1st in line for a100x2; GPUs reserved on big from ")
    offers = offers_on(core.settings.broker_url, node_queue(big))
    assert sorted(o["attempt_id"] for o in offers) == [first, second]
    assert all(len(o["gpus"]) == 2 for o in offers) and offers_on(core.settings.broker_url, node_queue(small)) == []


def test_an_op_no_online_node_could_ever_run_says_so_at_once(core):
    gpu_market(core, "a100x4", 4)
    gpu_node(core, "pair", 2)
    user_id, _ = factories.user(core, credits=1_000_000)
    waiting = submit(core, user_id, market="a100x4")

    place(core)

    assert attempt(core, waiting).waiting == "no online node has 4 GPUs of 40 GB"


def test_an_offer_left_unclaimed_is_withdrawn_and_placed_again_elsewhere_when_its_node_is_gone(core):
    gpu_market(core, "a100", 1)
    first_node = gpu_node(core, "first", 1)
    user_id, _ = factories.user(core, credits=1_000_000)
    attempt_id = submit(core, user_id, market="a100")
    place(core)
    assert attempt(core, attempt_id).placed_node_id == first_node

    # Within the claim window, a pass leaves it where it is
    place(core, now=utcnow() + timedelta(seconds=2))
    assert attempt(core, attempt_id).placed_node_id == first_node
    # When its node goes offline and another joins, the next pass withdraws it and places it there
    with core.transaction() as session:
        session.get(Node, first_node).state = NodeState.OFFLINE
    second_node = gpu_node(core, "second", 1)
    assert place(core).withdrawn == 1
    place(core)
    assert attempt(core, attempt_id).placed_node_id == second_node
    # And one left unclaimed past the window is withdrawn, and placed again by the pass after
    assert place(core, now=utcnow() + timedelta(seconds=6)).withdrawn == 1
    assert place(core, now=utcnow() + timedelta(seconds=6)).placed == 1


def test_a_claim_of_an_attempt_placed_on_another_node_is_refused(core):
    gpu_market(core, "a100", 1)
    here, there = gpu_node(core, "here", 1), gpu_node(core, "there", 1)
    user_id, _ = factories.user(core, credits=1_000_000)
    attempt_id = submit(core, user_id, market="a100")
    place(core)
    placed = attempt(core, attempt_id)
    other = there if placed.placed_node_id == here else here
    with core.transaction() as session:
        try:
            claim_attempt(session, session.get(Node, other), attempt_id, gpus=[f"GPU-{'there' if other == there else 'here'}-0"])
            raise AssertionError("the claim was taken")
        except Conflict as e:
            assert "placed on another node" in str(e)
    with core.transaction() as session:
        claimed = claim_attempt(session, session.get(Node, placed.placed_node_id), attempt_id, gpus=placed.placed_gpus)
        assert (claimed.waiting, claimed.reserved_node_id) == (None, None)


def test_priority_goes_first_and_a_reservation_is_stored_with_its_reason(core):
    gpu_market(core, "a100", 1)
    gpu_market(core, "a100x2", 2)
    rig = gpu_node(core, "rig", 2)
    user_id, _ = factories.user(core, credits=10_000_000)
    running = submit(core, user_id, market="a100")
    place(core)
    with core.transaction() as session:
        node = session.get(Node, rig)
        placed = session.get(Attempt, running)
        claim_attempt(session, node, running, gpus=placed.placed_gpus)
    low = submit(core, user_id, market="a100")
    pair = submit(core, user_id, market="a100x2", priority=3)

    place(core)

    # The 2-GPU op of higher priority fits nowhere now: it gets the GPUs of rig from when the
    # running op's time limit ends, and the 1-GPU op of lower priority may not take the free GPU
    # because its own time limit would run past that
    held = attempt(core, pair)
    assert held.reserved_node_id == rig and held.reserved_from is not None
    assert held.waiting.startswith("1st in line for a100x2; GPUs reserved on rig from ")
    assert attempt(core, low).placed_node_id is None
    assert attempt(core, low).waiting.startswith("1st in line for a100;")


def test_a_quota_of_running_gpus_set_by_an_admin_holds_the_person_back_while_others_go_ahead(core):
    from scheduler.models import Quota

    gpu_market(core, "a100", 1)
    gpu_node(core, "rig", 4)
    ann, _ = factories.user(core, credits=1_000_000)
    bob, _ = factories.user(core, credits=1_000_000)
    with core.transaction() as session:
        session.add(Quota(user_id=ann, market_id=None, max_running_gpus=2))
    anns = [submit(core, ann, market="a100") for _ in range(4)]
    bobs = [submit(core, bob, market="a100") for _ in range(2)]

    place(core)

    placed = {a: attempt(core, a).placed_node_id is not None for a in anns + bobs}
    assert sum(placed[a] for a in anns) == 2 and all(placed[b] for b in bobs)
    assert {attempt(core, a).waiting for a in anns if not placed[a]} == {"your quota of 2 GPUs is in use"}


def test_an_array_runs_at_most_its_limit_at_once_and_the_next_starts_as_one_ends(core):
    from scheduler.array_spec import parse_array_spec
    from scheduler.arrays import submit_array
    from scheduler.attempts import finish_attempt

    gpu_market(core, "a100", 1)
    rig = gpu_node(core, "rig", 8)
    user_id, _ = factories.user(core, credits=1_000_000)
    doc = hello_world("busybox")
    doc["ops"][0]["args"]["gpu_count"] = 1
    with core.transaction() as session:
        made = submit_array(session, session.get(User, user_id), doc, parse_array_spec("0-9%3", max_size=100),
                            market_slug="a100", default_timeout_s=60, max_array_ops=1000)
        array_id = made.array.id

    place(core)

    with core.sessions() as session:
        from scheduler.models import Job, Op

        attempts = list(session.scalars(select(Attempt).join(Op).join(Job).where(Job.array_id == array_id)))
        placed = [a for a in attempts if a.placed_node_id == rig]
        assert len(placed) == 3
        assert {a.waiting for a in attempts if a.placed_node_id is None} == {
            "its array runs as many jobs at once as its limit allows"}
        first = placed[0]
        gpus = list(first.placed_gpus)
    # When one of the three ends, the next of the array takes its place
    with core.transaction() as session:
        node = session.get(Node, rig)
        claim_attempt(session, node, first.id, gpus=gpus)
    with core.transaction() as session:
        from scheduler.attempts import start_attempt

        start_attempt(session, session.get(Node, rig), first.id)
    with core.transaction() as session:
        finish_attempt(session, session.get(Node, rig), first.id, exit_code=0)
    assert place(core).placed == 1


def test_a_finished_attempts_node_is_handed_the_first_in_line_at_once(core):
    from scheduler.attempts import finish_attempt, next_work, start_attempt

    gpu_market(core, "a100", 1)
    rig = gpu_node(core, "rig", 1)
    user_id, _ = factories.user(core, credits=1_000_000)
    running = submit(core, user_id, market="a100")
    place(core)
    with core.transaction() as session:
        node = session.get(Node, rig)
        claim_attempt(session, node, running, gpus=["GPU-rig-0"])
        start_attempt(session, node, running)
    older = submit(core, user_id, market="a100")
    urgent = submit(core, user_id, market="a100", priority=5)
    place(core)  # puts them in line: the urgent one first
    assert attempt(core, urgent).waiting.startswith("1st in line") and attempt(core, older).line_position == 2

    # When the running attempt's end is reported, the same transaction places and claims the urgent one
    with core.transaction() as session:
        node = session.get(Node, rig)
        finish_attempt(session, node, running, exit_code=0)
        orders = next_work(session, node, half_life_s=3600)
        assert [(o.id, o.gpus) for o in orders] == [(urgent, ("GPU-rig-0",))]
        # and asks for no pass: the freed GPU is taken
        assert not placing.take_wanted(session)
    assert attempt(core, urgent).node_id == rig and attempt(core, older).node_id is None
