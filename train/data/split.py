"""Hold out a fraction of the images for the validation loss (kohya's validation_split).

The choice depends only on (validation_seed, the image's path within its
subset's folder), so a run with or without evaluation trains on exactly the
same images, wherever the dataset lives (another machine, another cache dir).
"""

from __future__ import annotations

import hashlib
import math

from train.data.records import ImageRecord


def _within_subset(record: ImageRecord) -> str:
    root = record.subset.image_dir
    if root is not None and record.path.is_relative_to(root):
        return record.path.relative_to(root).as_posix()
    return record.path.name  # a fine-tuning subset whose metadata names absolute paths


def _rank(seed: int, record: ImageRecord) -> str:
    return hashlib.sha256(f"{seed}:{_within_subset(record)}".encode()).hexdigest()


def split_validation(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, validation): per dataset, round(fraction x images) held out, at least one, never all.

    A dataset's own validation_split/validation_seed (from a kohya TOML, carried by its
    subsets) replace ``fraction``/``seed`` for that dataset. Regularization images always
    stay in training.
    """
    held: set[int] = set()
    for dataset_index in sorted({r.dataset_index for r in records}):
        members = [i for i, r in enumerate(records) if r.dataset_index == dataset_index]
        own = records[members[0]].subset  # dataset-level keys: every subset of the dataset has the same
        own_fraction = fraction if own.validation_split is None else own.validation_split
        own_seed = seed if own.validation_seed is None else own.validation_seed
        candidates = [i for i in members if not records[i].subset.is_reg]
        if own_fraction <= 0 or len(candidates) < 2:
            continue
        count = min(max(1, math.floor(own_fraction * len(candidates) + 0.5)), len(candidates) - 1)
        held.update(sorted(candidates, key=lambda i: _rank(own_seed, records[i]))[:count])
    train = [r for i, r in enumerate(records) if i not in held]
    validation = [r for i, r in enumerate(records) if i in held]
    return train, validation
