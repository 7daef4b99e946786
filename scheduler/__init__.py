"""The peergrid core: job store, job definitions, orchestration, markets and the broker side."""
