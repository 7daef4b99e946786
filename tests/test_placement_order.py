"""Order, fair share, quotas, reservations and backfill, on a simulated clock: the real ranking and
planner place a cluster tick by tick (tests.simulation), so minutes of a busy cluster take
milliseconds, and every figure the issue names is checked exactly."""

from __future__ import annotations

from datetime import timedelta

from scheduler.ordering import rank
from scheduler.planner import Limits, NodeRoom, Want, ordinal, plan
from tests.simulation import EPOCH, Cluster

ANN, BOB = 1, 2


def test_a_second_person_starts_within_one_op_length_and_gpu_time_splits_half_and_half():
    # Given one person with 100 ops of 10 s queued on 8 GPUs, running a while already
    cluster = Cluster([4, 4], tick_s=0.5)
    for _ in range(100):
        cluster.submit(ANN, runs_s=10, timeout_s=12)
    for _ in range(10):
        cluster.step()
    # When another submits 10 after them
    began = cluster.now
    bobs = [cluster.submit(BOB, runs_s=10, timeout_s=12) for _ in range(10)]

    # Then the second person's first op starts within one op length
    cluster.run_until(lambda: any(op.started is not None for op in bobs))
    assert cluster.now - began <= 10
    # And while both wait (until the last of the second person's ops starts), GPU time splits near half and half
    cluster.run_until(lambda: not any(op.started is None for op in bobs))
    shares = [held for at, held in cluster.timeline if at >= began]
    ann, bob = sum(h.get(ANN, 0) for h in shares), sum(h.get(BOB, 0) for h in shares)
    assert shares and 0.4 <= bob / (ann + bob) <= 0.6, (ann, bob)


def test_a_job_of_higher_priority_overtakes_the_waiting_ones():
    cluster = Cluster([1])
    for _ in range(6):
        cluster.submit(ANN, runs_s=10, timeout_s=12)
    cluster.step()
    urgent = cluster.submit(ANN, runs_s=10, timeout_s=12, priority=5)
    cluster.run_until(lambda: urgent.started is not None)
    # It is the first to start once the GPU frees, ahead of the five that waited before it
    assert [op.id for op in cluster.ops if op.started is not None] == [1, urgent.id]


def test_the_reasons_say_where_each_waits_in_line():
    cluster = Cluster([1])
    for _ in range(4):
        cluster.submit(ANN, runs_s=10, timeout_s=12)
    result = cluster.step()
    assert sorted(result.reasons.values())[0].startswith("1st in line for gpu")
    assert [r.split(";")[0] for r in result.reasons.values()] == ["1st in line for gpu", "2nd in line for gpu",
                                                                   "3rd in line for gpu"]
    assert ordinal(11) == "11th" and ordinal(22) == "22nd" and ordinal(101) == "101st"


def test_a_four_gpu_op_in_a_stream_of_one_gpu_ops_gets_a_reservation_and_others_backfill_before_it():
    # Given a 4-GPU node kept busy by a stream of 1-GPU ops of time limits from 2 to 20 s
    cluster = Cluster([4], tick_s=0.25)
    limits = iter([20, 6, 14, 3, 9, 2, 17, 5, 11, 4] * 40)

    def feed():
        # New 1-GPU ops whenever fewer than three wait, so the node is never short of small work
        while sum(1 for op in cluster.ops if op.gpus == 1 and op.started is None) < 3:
            limit = next(limits)
            cluster.submit(ANN, runs_s=limit * 0.8, timeout_s=limit)

    cluster.run_until(lambda: len(cluster.running()) == 4, each=feed)
    for _ in range(20):
        feed()
        cluster.step()
    # When a 4-GPU op arrives
    arrived = cluster.now
    longest = max(op.started + op.timeout_s for op in cluster.running())
    big = cluster.submit(BOB, gpus=4, runs_s=5, timeout_s=10)
    cluster.run_until(lambda: big.started is not None, each=feed)

    # Then it starts no later than the longest time limit among the ops running when it arrived
    assert big.started <= longest, (big.started, longest, arrived)
    # And it was told where its GPUs are reserved, from when
    reasons = [p.reasons.get(big.id) for p in cluster.plans if p.reasons.get(big.id)]
    assert reasons and "GPUs reserved on rig-0 from" in reasons[0]
    # And meanwhile, shorter ops kept GPUs in use: some started after it arrived and before it did
    backfilled = [op for op in cluster.ops if op.gpus == 1 and op.started is not None and arrived < op.started < big.started]
    assert backfilled and all(op.started + op.timeout_s <= big.started for op in backfilled)


def test_without_reservations_the_big_op_would_wait_behind_the_stream():
    """The same stream with the 4-GPU op ranked last (no reservation) starves it: what the test above needs."""
    cluster = Cluster([4], tick_s=0.25)
    for _ in range(40):
        cluster.submit(ANN, runs_s=4, timeout_s=5)
    cluster.step()
    big = cluster.submit(BOB, gpus=4, runs_s=5, timeout_s=10, priority=-1)
    for _ in range(20):
        cluster.step()
    assert big.started is None and len(cluster.running()) == 4


def test_a_quota_of_running_gpus_holds_a_person_back_and_says_so():
    cluster = Cluster([4, 4])
    for _ in range(8):
        cluster.submit(ANN, runs_s=10, timeout_s=12)
    cluster.submit(BOB, runs_s=10, timeout_s=12)
    result = cluster.step(Limits(running_quota={(ANN, None): 3}))
    assert sum(op.gpus for op in cluster.running() if op.owner == ANN) == 3
    assert any(op.owner == BOB for op in cluster.running())
    assert "your quota of 3 GPUs is in use" in result.reasons.values()


def test_an_array_runs_at_most_its_limit_at_once():
    wants = [Want(attempt_id=i, job_id=i, owner_id=ANN, market_id=1, gpus=1, timeout_s=10, array_id=7,
                  created_at=EPOCH + timedelta(seconds=i)) for i in range(10)]
    room = NodeRoom(id=1, name="rig", gpu_vram={f"G{i}": 1 for i in range(8)},
                    qualifies={1: frozenset(f"G{i}" for i in range(8))}, markets=frozenset({1}))
    result = plan(wants, [room], now=EPOCH, limits=Limits(array_room={7: 3}))
    assert len(result.placements) == 3
    assert set(result.reasons.values()) == {"its array runs as many jobs at once as its limit allows"}


def test_fair_share_takes_turns_between_equals_and_lets_the_lighter_user_go_first():
    wants = [Want(attempt_id=i, job_id=i, owner_id=ANN if i < 5 else BOB, market_id=1, gpus=1, timeout_s=10,
                  created_at=EPOCH + timedelta(seconds=i)) for i in range(8)]
    assert [w.owner_id for w in rank(wants, {})][:6] == [ANN, BOB, ANN, BOB, ANN, BOB]
    assert [w.owner_id for w in rank(wants, {ANN: 50_000.0})][:3] == [BOB, BOB, BOB]
