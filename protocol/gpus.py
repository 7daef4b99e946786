"""The rule for "these GPUs satisfy this market", and the unit GPU memory is counted in.

The server checks a claim with it and the worker chooses an op's GPUs with it, so the two can
never disagree about which cards qualify.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, TypeVar

# GPU memory is counted in the MB (MiB) NVML reports. A GB, in a requirement or on a page, is 1000
# of those, as Nosana writes it: a card sold as "24 GB" reports about 24,560 MB and meets a 24 GB
# requirement. This is the only place that converts.
MB_PER_GB = 1000


def mb_from_gb(gb: float) -> int:
    """GB as people write them (Nosana's required_vram, --min-vram-gb) in the MB the store keeps."""
    return int(round(float(gb) * MB_PER_GB))


def gb_text(mb: int | float | None) -> str:
    """MB as GB for sentences and pages: 24000 → '24', 24564 → '24.6'."""
    return f"{(mb or 0) / MB_PER_GB:.1f}".removesuffix(".0")


def version_tuple(value: object) -> tuple[int, ...]:
    """A version such as '8.9', '12.2' or '550.54.15' as numbers for comparing; '' or None is ()."""
    if value is None or value == "":
        return ()
    parts = []
    for piece in str(value).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class GpuFacts(Protocol):
    """What the rule reads of a GPU: a worker's probe result or the server's row of its report."""

    name: str
    memory_total_mb: int
    compute_capability: str | None
    cuda_version: str | None


class MarketNeeds(Protocol):
    """What the rule reads of a market: the server's row or the worker's copy of it."""

    slug: str
    gpu_count: int
    min_vram_mb: int
    gpu_models: Sequence[str]
    min_compute_capability: str | None
    min_cuda_version: str | None


def gpu_shortfall(gpu: GpuFacts, market: MarketNeeds, *, simulated: bool = False) -> str | None:
    """Why one GPU cannot serve an op of market, or None when it can.

    A simulated GPU has no compute capability or CUDA version, so those are not compared for it.
    """
    if gpu.memory_total_mb < market.min_vram_mb:
        return f"it has {gb_text(gpu.memory_total_mb)} GB of memory and the market needs {gb_text(market.min_vram_mb)} GB"
    models = list(market.gpu_models or ())
    if models and gpu.name not in models:
        return f"the market takes only {', '.join(models)}"
    if simulated:
        return None
    if market.min_compute_capability and version_tuple(gpu.compute_capability) < version_tuple(
        market.min_compute_capability
    ):
        return (
            f"its compute capability is {gpu.compute_capability or 'unknown'} and the market needs "
            f"{market.min_compute_capability} or newer"
        )
    if market.min_cuda_version and version_tuple(gpu.cuda_version) < version_tuple(market.min_cuda_version):
        return f"its CUDA version is {gpu.cuda_version or 'unknown'} and the market needs {market.min_cuda_version} or newer"
    return None


def gpu_satisfies(gpu: GpuFacts, market: MarketNeeds, *, simulated: bool = False) -> bool:
    return gpu_shortfall(gpu, market, simulated=simulated) is None


G = TypeVar("G", bound=GpuFacts)


def pick_gpus(free: Iterable[G], market: MarketNeeds, *, simulated: bool = False) -> list[G] | None:
    """The GPUs an op of market gets from the free ones, or None when they are not enough.

    Takes the smallest fitting GPUs first, so bigger cards stay free for ops that need them.
    """
    if market.gpu_count == 0:
        return []
    fitting = sorted(
        (g for g in free if gpu_satisfies(g, market, simulated=simulated)),
        key=lambda g: (g.memory_total_mb, getattr(g, "index", 0)),
    )
    return fitting[: market.gpu_count] if len(fitting) >= market.gpu_count else None
