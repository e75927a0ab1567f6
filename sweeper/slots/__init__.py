"""Slots and workers: the persistent worker pool, one trial in a worker, the synthetic trial."""
