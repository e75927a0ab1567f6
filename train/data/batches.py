"""Plan an epoch: repeats expanded, one bucket per batch, order fixed by (seed, epoch).

The plan uses its own ``random.Random`` so model code that touches the global RNG cannot
change which images a step sees, and a resumed run can rebuild any epoch's batches.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.data.buckets import Size
    from train.data.records import ImageRecord
    from train.data.sources import DatasetBlueprint


def sample_counts(records: list[ImageRecord]) -> list[int]:
    """How often each record appears per epoch: its subset's num_repeats.

    Regularization images are balanced to the number of training samples of their
    dataset, as kohya does: registered with their repeats until they reach that number
    (later ones are left out), then given one more repeat each, in turn, until they do.
    """
    counts = [0 if record.subset.is_reg else record.subset.num_repeats for record in records]
    for dataset_index in sorted({record.dataset_index for record in records}):
        members = [i for i, record in enumerate(records) if record.dataset_index == dataset_index]
        train_total = sum(counts[i] for i in members if not records[i].subset.is_reg)
        reg_members = [i for i in members if records[i].subset.is_reg]
        _balance_regularization(counts, reg_members, records, train_total)
    return counts


def _balance_regularization(
    counts: list[int], reg_members: list[int], records: list[ImageRecord], train_total: int
) -> None:
    registered = 0
    first_round = True
    while reg_members and registered < train_total:
        for i in reg_members:
            added = records[i].subset.num_repeats if first_round else 1
            counts[i] += added
            registered += added
            if registered >= train_total:
                break
        first_round = False


def batch_sizes_of(blueprints: list[DatasetBlueprint]) -> list[int]:
    return [blueprint.batch_size for blueprint in blueprints]


def _group_samples(records: list[ImageRecord]) -> dict[tuple[int, Size], list[ImageRecord]]:
    groups: dict[tuple[int, Size], list[ImageRecord]] = defaultdict(list)
    for record, count in zip(records, sample_counts(records), strict=True):
        groups[(record.dataset_index, record.bucket)].extend([record] * count)
    return groups


def _batch_size(batch_sizes: list[int], dataset_index: int) -> int:
    if dataset_index >= len(batch_sizes):
        raise ValueError(f"no batch size for dataset {dataset_index}; got batch_sizes={batch_sizes}")
    return batch_sizes[dataset_index]


def plan_epoch(records: list[ImageRecord], batch_sizes: list[int], epoch: int, seed: int) -> list[list[ImageRecord]]:
    """Batches of one epoch; each holds one dataset's one bucket; the last of a bucket may be short."""
    rng = random.Random(f"plan_epoch:{seed}:{epoch}")  # str seeds hash the same on every run
    batches: list[list[ImageRecord]] = []
    groups = _group_samples(records)
    for key in sorted(groups):
        samples = groups[key]
        rng.shuffle(samples)
        size = _batch_size(batch_sizes, key[0])
        batches += [samples[start : start + size] for start in range(0, len(samples), size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(records: list[ImageRecord], batch_sizes: list[int]) -> int:
    """Number of batches ``plan_epoch`` returns, without building them."""
    return sum(
        math.ceil(len(samples) / _batch_size(batch_sizes, dataset_index))
        for (dataset_index, _), samples in _group_samples(records).items()
    )
