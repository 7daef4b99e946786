"""Placement over random inventories and op mixes: no double booking, no misplacement."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocol.gpus import gpu_satisfies as gpu_fits
from protocol.gpus import pick_gpus, version_tuple
from protocol.messages import MarketSpec
from worker.capacity import Capacity
from worker.gpus import Gpu

MODELS = ["NVIDIA GeForce RTX 4090", "NVIDIA A100-SXM4-80GB", "NVIDIA L4", "NVIDIA H100 80GB HBM3"]
MEMORY = [16_000, 24_564, 49_140, 81_920]


@st.composite
def inventories(draw, max_size=8):
    count = draw(st.integers(0, max_size))
    return tuple(
        Gpu(index=i, uuid=f"GPU-{i}", name=draw(st.sampled_from(MODELS)), memory_total_mb=draw(st.sampled_from(MEMORY)),
            memory_free_mb=0, compute_capability=draw(st.sampled_from(["7.5", "8.0", "8.9", "9.0"])),
            cuda_version=draw(st.sampled_from(["11.8", "12.2", "12.4"])))
        for i in range(count)
    )


markets = st.builds(
    MarketSpec,
    slug=st.sampled_from(["m1", "m2", "m3"]),
    queue=st.just("market.m"),
    gpu_count=st.sampled_from([0, 1, 2, 4]),
    min_vram_mb=st.sampled_from([0, 24_000, 48_000, 80_000]),
    gpu_models=st.lists(st.sampled_from(MODELS), max_size=2, unique=True).map(tuple),
    min_compute_capability=st.sampled_from([None, "8.0", "8.9"]),
    min_cuda_version=st.sampled_from([None, "12.2"]),
)


def test_version_comparison_is_numeric():
    assert version_tuple("12.10") > version_tuple("12.4") > version_tuple("12")
    assert version_tuple(None) == ()
    assert version_tuple("12.2.140") > version_tuple("12.2") and version_tuple("8.9") == (8, 9)


@settings(max_examples=500, deadline=None)
@given(inventories(), markets)
def test_picked_gpus_are_free_distinct_and_fit_or_none_when_too_few_do(gpus, market):
    free = [g for g in gpus if g.index % 3 != 0]  # some are busy
    picked = pick_gpus(free, market)
    fitting = [g for g in free if gpu_fits(g, market)]
    if market.gpu_count == 0:
        assert picked == []
    elif len(fitting) < market.gpu_count:
        assert picked is None
    else:
        assert picked is not None and len(picked) == market.gpu_count
        assert len({g.uuid for g in picked}) == len(picked)
        assert all(g in free and gpu_fits(g, market) for g in picked)


class NodeCapacity(RuleBasedStateMachine):
    """Random claims and releases on one node never share a GPU or exceed its slots."""

    def __init__(self):
        super().__init__()
        self.capacity = None
        self.live: dict[int, tuple[dict, list]] = {}
        self.next_id = 1

    @precondition(lambda self: self.capacity is None)
    @rule(gpus=inventories(), slots=st.integers(1, 3))
    def boot(self, gpus, slots):
        self.capacity = Capacity(gpus, slots)

    @precondition(lambda self: self.capacity is not None)
    @rule(market=markets)
    def claim(self, market):
        could = self.capacity.can_serve(market)
        got = self.capacity.reserve(self.next_id, market)
        assert (got is not None) == could
        if got is not None:
            self.live[self.next_id] = (market, got)
        self.next_id += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def release(self, data):
        attempt = data.draw(st.sampled_from(sorted(self.live)))
        self.capacity.release(attempt)
        del self.live[attempt]

    @invariant()
    def no_gpu_is_held_twice_and_each_fits(self):
        if self.capacity is None:
            return
        seen = set()
        for market, gpus in self.live.values():
            for gpu in gpus:
                assert gpu.uuid not in seen
                seen.add(gpu.uuid)
                assert gpu_fits(gpu, market)
        assert set(self.capacity.holders()) == seen

    @invariant()
    def cpu_slots_are_not_exceeded(self):
        if self.capacity is not None:
            cpu = [a for a, (m, _) in self.live.items() if m.gpu_count == 0]
            assert len(cpu) <= self.capacity.slots


TestNodeCapacity = NodeCapacity.TestCase
TestNodeCapacity.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_a_container_gets_its_ops_share_of_the_machine_unless_the_provider_sets_limits():
    from worker.capacity import share_limits
    from worker.runtime import Limits, Machine

    machine = Machine(memory_mb=64_000, cpus=16)

    assert share_limits(machine, gpus=1, gpu_total=4, slots=2) == Limits(memory_mb=16_000, cpus=4.0)
    assert share_limits(machine, gpus=4, gpu_total=4, slots=2) == Limits(memory_mb=64_000, cpus=16.0)
    assert share_limits(machine, gpus=0, gpu_total=4, slots=2) == Limits(memory_mb=32_000, cpus=8.0)
    assert share_limits(Machine(memory_mb=1_000, cpus=1), gpus=0, gpu_total=0, slots=256) == Limits(
        memory_mb=64, cpus=0.01)  # never below what Docker accepts
    assert share_limits(machine, gpus=1, gpu_total=4, slots=2, memory_mb=512, cpus=0.5, pids=64) == Limits(
        pids=64, memory_mb=512, cpus=0.5)
