"""The worker agent a provider runs: probes its GPUs, takes offers, runs containers, reports."""

__version__ = "0.1.0"
