"""kohya folder layout (`N_name` = N repeats) and the synthetic demo dataset."""

from __future__ import annotations

import pytest

from tests.data_helpers import dataset_config, write_captioned, write_image
from train.data import (
    count_images_per_subset,
    count_samples_with_repeats,
    load_dataset,
    make_synthetic_dataset,
    read_blueprints,
    scan_records,
    steps_per_epoch,
)
from train.data.synthetic import SUBSET_FOLDER
from train.errors import DatasetError


def test_repeat_folders_give_repeats_and_class_tokens(tmp_path):
    write_captioned(tmp_path / "3_a", "one")
    write_captioned(tmp_path / "3_a", "two")
    write_captioned(tmp_path / "1_b", "three")
    [blueprint] = read_blueprints(dataset_config(train_data_dir=str(tmp_path)))
    by_dir = {subset.image_dir.name: subset for subset in blueprint.subsets}
    assert {name: s.num_repeats for name, s in by_dir.items()} == {"3_a": 3, "1_b": 1}
    assert by_dir["3_a"].class_tokens == "a"
    records = scan_records([blueprint])
    assert count_images_per_subset(records) == {tmp_path / "3_a": 2, tmp_path / "1_b": 1}
    assert count_samples_with_repeats(records) == 7
    assert steps_per_epoch(records, [1]) == 7


def test_folder_name_is_caption_when_image_has_no_caption_file(tmp_path):
    write_image(tmp_path / "5_sks dog" / "photo.png")
    records = scan_records(read_blueprints(dataset_config(train_data_dir=str(tmp_path))))
    assert [r.caption for r in records] == ["sks dog"]
    assert records[0].subset.num_repeats == 5


def test_loose_images_form_a_subset_with_one_repeat(tmp_path):
    write_captioned(tmp_path, "loose")
    write_captioned(tmp_path / "2_x", "inner")
    records = scan_records(read_blueprints(dataset_config(train_data_dir=str(tmp_path))))
    repeats = {r.path.name: r.subset.num_repeats for r in records}
    assert repeats == {"loose.png": 1, "inner.png": 2}
    assert count_samples_with_repeats(records) == 3


def test_config_values_are_the_defaults(tmp_path):
    write_captioned(tmp_path / "1_a", "img")
    cfg = dataset_config(
        train_data_dir=str(tmp_path), resolution=[96, 64], batch_size=2, shuffle_caption=True, keep_tokens=1
    )
    [blueprint] = read_blueprints(cfg)
    assert blueprint.resolution == (96, 64) and blueprint.batch_size == 2
    assert blueprint.subsets[0].shuffle_caption and blueprint.subsets[0].keep_tokens == 1


def test_folder_without_repeat_count_is_reported(tmp_path):
    write_captioned(tmp_path / "2_good", "img")
    write_captioned(tmp_path / "extras", "img")
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(train_data_dir=str(tmp_path)))
    assert len(caught.value.problems) == 1
    assert str(tmp_path / "extras") in caught.value.problems[0]


def test_synthetic_dataset_is_deterministic_and_scans(tmp_path):
    first = make_synthetic_dataset(tmp_path / "one", num_images=6, seed=3, size=64)
    second = make_synthetic_dataset(tmp_path / "two", num_images=6, seed=3, size=64)
    files = sorted(p.name for p in (first / SUBSET_FOLDER).iterdir())
    assert len(files) == 12  # an image and a caption each
    for name in files:
        assert (first / SUBSET_FOLDER / name).read_bytes() == (second / SUBSET_FOLDER / name).read_bytes()
    cfg = dataset_config(train_data_dir=str(first), bucket_reso_steps=16, min_bucket_reso=32)
    records = scan_records(read_blueprints(cfg))
    assert len(records) == 6 and count_samples_with_repeats(records) == 24
    assert {r.original_size for r in records} == {(64, 64), (96, 64), (64, 96)}
    assert len({r.bucket for r in records}) == 3  # bucketing has work to do
    assert all(", shape" in r.caption for r in records)


def test_synthetic_dataset_leaves_existing_data_alone(tmp_path):
    root = tmp_path / "data"
    write_captioned(root / "1_mine", "img")
    assert make_synthetic_dataset(root) == root
    assert sorted(p.name for p in root.iterdir()) == ["1_mine"]


def test_load_dataset_makes_synthetic_data_when_enabled(tmp_path):
    cfg = dataset_config(train_data_dir=str(tmp_path / "demo"))
    cfg.synthetic.enabled = True
    cfg.synthetic.num_images = 3
    blueprints, records = load_dataset(cfg)
    assert len(blueprints) == 1 and len(records) == 3
