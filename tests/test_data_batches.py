"""Epoch plans: repeats expanded, one bucket per batch, deterministic, regularization balanced."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from train.data import ImageRecord, Subset, plan_epoch, sample_counts, steps_per_epoch


def _records(spec: list[tuple[str, int, int, tuple[int, int], bool]]) -> list[ImageRecord]:
    """(name, repeats, dataset_index, bucket, is_reg) -> records; one subset per repeats value."""
    records = []
    for name, repeats, dataset_index, bucket, is_reg in spec:
        subset = Subset(image_dir=Path(f"/data/{repeats}_{dataset_index}_{is_reg}"), num_repeats=repeats, is_reg=is_reg)
        records.append(ImageRecord(Path(f"/data/{name}.png"), name, subset, dataset_index, bucket, bucket))
    return records


MIXED = _records(
    [(f"a{i}", 3, 0, (64, 64), False) for i in range(5)]
    + [(f"b{i}", 2, 0, (96, 64), False) for i in range(4)]
    + [(f"c{i}", 1, 1, (64, 96), False) for i in range(7)]
)


def test_same_inputs_same_plan_and_epochs_differ():
    plan = plan_epoch(MIXED, [2, 3], epoch=0, seed=42)
    assert plan == plan_epoch(MIXED, [2, 3], epoch=0, seed=42)
    assert plan != plan_epoch(MIXED, [2, 3], epoch=1, seed=42)
    assert plan != plan_epoch(MIXED, [2, 3], epoch=0, seed=43)


def test_every_sample_appears_num_repeats_times():
    plan = plan_epoch(MIXED, [2, 3], epoch=3, seed=0)
    seen = Counter(record.path for batch in plan for record in batch)
    assert seen == {record.path: record.subset.num_repeats for record in MIXED}


def test_batches_never_mix_buckets_or_datasets_and_respect_batch_size():
    batch_sizes = [2, 3]
    plan = plan_epoch(MIXED, batch_sizes, epoch=0, seed=0)
    short = Counter()
    for batch in plan:
        assert len({(r.dataset_index, r.bucket) for r in batch}) == 1
        size = batch_sizes[batch[0].dataset_index]
        assert 1 <= len(batch) <= size
        short[(batch[0].dataset_index, batch[0].bucket)] += len(batch) < size
    assert all(count <= 1 for count in short.values())  # only a bucket's last batch is short
    # 15 samples / 2 -> 8, 8 / 2 -> 4, 7 / 3 -> 3
    assert len(plan) == steps_per_epoch(MIXED, batch_sizes) == 15


def test_batch_order_is_shuffled_across_buckets():
    plan = plan_epoch(MIXED, [1, 1], epoch=0, seed=0)
    keys = [(batch[0].dataset_index, batch[0].bucket) for batch in plan]
    switches = sum(a != b for a, b in zip(keys, keys[1:], strict=False))
    assert switches > 10  # 3 groups in one run each would switch only twice


def test_plan_leaves_the_global_rng_alone():
    random.seed(123)
    state = random.getstate()
    plan_epoch(MIXED, [2, 3], epoch=0, seed=0)
    assert random.getstate() == state


def test_regularization_images_are_balanced_to_training_samples():
    train = [(f"t{i}", 3, 0, (64, 64), False) for i in range(2)]  # 6 training samples
    reg = [(f"r{i}", 1, 0, (64, 64), True) for i in range(4)]
    counts = sample_counts(_records(train + reg))
    assert counts == [3, 3, 2, 2, 1, 1]  # 4 once, then one more each in turn until 6


def test_surplus_regularization_images_are_left_out():
    train = [("t0", 3, 0, (64, 64), False)]
    reg = [(f"r{i}", 1, 0, (64, 64), True) for i in range(10)]
    counts = sample_counts(_records(train + reg))
    assert counts == [3, 1, 1, 1] + [0] * 7


def test_validation_split_is_deterministic_per_dataset_and_keeps_reg_images(tmp_path):
    from pathlib import Path

    from train.data.records import ImageRecord
    from train.data.sources import Subset
    from train.data.split import split_validation

    train_subset, reg_subset = Subset(image_dir=Path("a")), Subset(image_dir=Path("r"), is_reg=True)
    records = [ImageRecord(Path(f"a/{i}.png"), "c", train_subset, i % 2, (64, 64), (64, 64)) for i in range(10)] + [
        ImageRecord(Path(f"r/{i}.png"), "c", reg_subset, 0, (64, 64), (64, 64)) for i in range(4)
    ]
    train, val = split_validation(records, 0.2, seed=3)
    assert len(val) == 2 and {r.dataset_index for r in val} == {0, 1}  # 5 images each -> 1 held out each
    assert not any(r.subset.is_reg for r in val) and len(train) + len(val) == len(records)
    assert split_validation(records, 0.2, seed=3) == (train, val)
    assert split_validation(records, 0.0, seed=3) == (records, [])


def test_the_validation_split_does_not_depend_on_where_the_dataset_lives():
    """The same folder at two places (two machines, two cache dirs) holds out the same images."""
    from pathlib import Path

    from train.data.records import ImageRecord
    from train.data.sources import Subset
    from train.data.split import split_validation

    def held_out(root: str) -> list[str]:
        subset = Subset(image_dir=Path(root) / "1_sks")
        records = [ImageRecord(subset.image_dir / f"{i:03d}.png", "c", subset, 0, (64, 64), (64, 64)) for i in range(16)]
        return [r.path.name for r in split_validation(records, 0.25, seed=0)[1]]

    assert held_out("/home/a/.cache/lora_sweep/data/world-concept") == held_out("/tmp/ci/cache/data/world-concept")
