"""kohya dataset_config TOML: [general] defaults, per-dataset settings, subset overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data_helpers import dataset_config, write_image
from train.data import (
    count_images_per_subset,
    count_samples_with_repeats,
    plan_epoch,
    read_blueprints,
    scan_records,
    steps_per_epoch,
)
from train.errors import DatasetError

TWO_DATASETS = """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".caption"
batch_size = 3

[[datasets]]
resolution = 64
batch_size = 2
flip_aug = true

  [[datasets.subsets]]
  image_dir = "a"
  num_repeats = 5

  [[datasets.subsets]]
  image_dir = "b"
  class_tokens = "sks cat"
  keep_tokens = 2
  flip_aug = false

[[datasets]]
resolution = [96, 64]
enable_bucket = false

  [[datasets.subsets]]
  image_dir = "c"
  is_reg = false
"""


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """kohya reads a TOML's relative image_dir from the current directory."""
    monkeypatch.chdir(tmp_path)


def _write_toml(folder: Path, text: str) -> Path:
    path = folder / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _build_two_datasets(root: Path) -> Path:
    for stem in ("a1", "a2"):
        write_image(root / "a" / f"{stem}.png")
        (root / "a" / f"{stem}.caption").write_text("tag one, tag two", encoding="utf-8")
    write_image(root / "b" / "b1.png")  # no caption: class_tokens is used
    for stem in ("c1", "c2", "c3"):
        write_image(root / "c" / f"{stem}.png", size=(80, 80))
        (root / "c" / f"{stem}.caption").write_text("other", encoding="utf-8")
    return _write_toml(root, TWO_DATASETS)


def test_two_datasets_with_general_defaults(tmp_path):
    toml_path = _build_two_datasets(tmp_path)
    first, second = read_blueprints(dataset_config(dataset_config=str(toml_path), bucket_reso_steps=32))
    assert (first.resolution, first.batch_size, first.enable_bucket) == ((64, 64), 2, False)  # kohya: off unless set
    assert (second.resolution, second.batch_size, second.enable_bucket) == ((96, 64), 3, False)
    assert first.bucket_reso_steps == 32  # not in the TOML: the config value
    sub_a, sub_b = first.subsets
    [sub_c] = second.subsets
    assert sub_a.image_dir == tmp_path / "a"  # relative to the current directory, as in kohya
    assert (sub_a.num_repeats, sub_b.num_repeats, sub_c.num_repeats) == (5, 1, 1)
    assert (sub_a.keep_tokens, sub_b.keep_tokens, sub_c.keep_tokens) == (1, 2, 1)
    assert (sub_a.flip_aug, sub_b.flip_aug, sub_c.flip_aug) == (True, False, False)
    assert sub_b.class_tokens == "sks cat" and sub_a.class_tokens is None
    assert all(s.shuffle_caption and s.caption_extension == ".caption" for s in (sub_a, sub_b, sub_c))


def test_two_datasets_scan_and_batch(tmp_path):
    toml_path = _build_two_datasets(tmp_path)
    blueprints = read_blueprints(dataset_config(dataset_config=str(toml_path)))
    records = scan_records(blueprints)
    assert count_images_per_subset(records) == {tmp_path / "a": 2, tmp_path / "b": 1, tmp_path / "c": 3}
    assert count_samples_with_repeats(records) == 2 * 5 + 1 + 3
    captions = {r.path.name: r.caption for r in records}
    assert captions["a1.png"] == "tag one, tag two" and captions["b1.png"] == "sks cat"
    assert {r.bucket for r in records if r.dataset_index == 1} == {(96, 64)}  # bucketing off
    batches = plan_epoch(records, [2, 3], epoch=0, seed=1)
    assert len(batches) == steps_per_epoch(records, [2, 3]) == 6 + 1  # ceil(11 / 2) + ceil(3 / 3)
    assert all(len(b) <= (2 if b[0].dataset_index == 0 else 3) for b in batches)


def test_unsupported_kohya_option_at_its_default_is_accepted(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    text = '[general]\nclass_tokens = "x"\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nalpha_mask = false\n'
    [blueprint] = read_blueprints(dataset_config(dataset_config=str(_write_toml(tmp_path, text))))
    assert blueprint.subsets[0].class_tokens == "x"


def test_unsupported_kohya_option_in_use_is_reported(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    text = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nalpha_mask = true\n"
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(_write_toml(tmp_path, text))))
    [problem] = caught.value.problems
    assert problem.startswith("datasets[0].subsets[0].alpha_mask: kohya option not supported by this trainer: ")
    assert problem.endswith(
        "remove it or set it to false (transparent pixels are composited on white and trained like the rest)"
    )


def test_dataset_key_inside_a_subset_is_reported(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    text = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nresolution = 512\n"
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(_write_toml(tmp_path, text))))
    assert "datasets[0].subsets[0].resolution: belongs in [[datasets]]" in str(caught.value)


def test_dataset_without_subsets_is_reported(tmp_path):
    text = "[[datasets]]\nresolution = 512\n"
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(_write_toml(tmp_path, text))))
    assert "datasets[0].subsets: no [[datasets.subsets]]" in str(caught.value)
