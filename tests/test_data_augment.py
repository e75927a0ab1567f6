"""reg_data_dir, subset augmentation defaults, random crop, colour aug, SDXL crop conditioning, cache checks."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data_helpers import dataset_config, write_captioned, write_image
from train.data import (
    Augmentation,
    CaptionProcessor,
    ImageRecord,
    Subset,
    cache_problems,
    count_samples_with_repeats,
    crop_top_left,
    draw_augmentation,
    load_image_tensor,
    original_size_hw,
    read_blueprints,
    sample_counts,
    scan_records,
    target_size_hw,
)
from train.data.augment import apply_gamma
from train.errors import DatasetError


def _noise_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _record(path: Path, bucket: tuple[int, int], **subset_options) -> ImageRecord:
    with Image.open(path) as image:
        size = image.size
    return ImageRecord(path, "c", Subset(image_dir=path.parent, **subset_options), 0, size, bucket)


def test_reg_data_dir_folders_become_balanced_reg_subsets(tmp_path):
    write_captioned(tmp_path / "train" / "2_sks dog", "a", "sks dog, sitting")
    write_captioned(tmp_path / "train" / "2_sks dog", "b", "sks dog, running")
    for name in ("r1", "r2", "r3"):
        write_image(tmp_path / "reg" / "2_dog" / f"{name}.png")
    cfg = dataset_config(train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"))
    [blueprint] = read_blueprints(cfg)
    reg = [s for s in blueprint.subsets if s.is_reg]
    assert [(s.image_dir.name, s.num_repeats, s.class_tokens) for s in reg] == [("2_dog", 2, "dog")]
    records = scan_records([blueprint])
    assert sorted(r.caption for r in records if r.subset.is_reg) == ["dog"] * 3
    # 4 training samples: the reg images are registered with 2 repeats until they reach 4.
    assert [n for r, n in zip(records, sample_counts(records), strict=True) if r.subset.is_reg] == [2, 2, 0]
    assert count_samples_with_repeats(records) == 8


@pytest.mark.parametrize("layout", ["missing", "empty", "bad_name"])
def test_bad_reg_folder_is_one_error_naming_the_key(tmp_path, layout):
    write_captioned(tmp_path / "train" / "1_a", "img")
    reg = tmp_path / "reg"
    if layout == "empty":
        reg.mkdir()
    if layout == "bad_name":
        write_image(reg / "dogs" / "r.png")
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(train_data_dir=str(tmp_path / "train"), reg_data_dir=str(reg)))
    [problem] = caught.value.problems
    assert problem.startswith("dataset.reg_data_dir: ") and str(reg) in problem


def test_reg_data_dir_is_ignored_with_a_toml_and_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # kohya reads a TOML's relative image_dir from the current directory
    write_image(tmp_path / "a" / "x.png")
    toml = tmp_path / "d.toml"
    toml.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nclass_tokens = 'x'\n")
    write_image(tmp_path / "reg" / "1_dog" / "r.png")
    with caplog.at_level(logging.WARNING):
        [blueprint] = read_blueprints(dataset_config(dataset_config=str(toml), reg_data_dir=str(tmp_path / "reg")))
    assert not any(s.is_reg for s in blueprint.subsets)
    assert "dataset.reg_data_dir is ignored" in caplog.text


def test_only_reg_images_is_still_reported(tmp_path):
    (tmp_path / "train" / "1_a").mkdir(parents=True)  # an empty training subset
    write_image(tmp_path / "reg" / "1_dog" / "r.png")
    blueprints = read_blueprints(
        dataset_config(train_data_dir=str(tmp_path / "train"), reg_data_dir=str(tmp_path / "reg"))
    )
    with pytest.raises(DatasetError) as caught:
        scan_records(blueprints)
    assert any("only regularization images" in p for p in caught.value.problems)


def test_toml_accepts_color_aug_and_random_crop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "a" / "x.png")
    text = "[general]\ncolor_aug = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nrandom_crop = true\n"
    (tmp_path / "d.toml").write_text(text)
    [blueprint] = read_blueprints(dataset_config(dataset_config=str(tmp_path / "d.toml")))
    assert blueprint.subsets[0].color_aug and blueprint.subsets[0].random_crop


def test_config_augmentation_values_are_subset_defaults(tmp_path):
    write_captioned(tmp_path / "1_a", "img")
    cfg = dataset_config(train_data_dir=str(tmp_path), color_aug=True, random_crop=True)
    [subset] = read_blueprints(cfg)[0].subsets
    assert subset.color_aug and subset.random_crop


def test_caption_dropout_every_n_epochs_reaches_the_caption_processor(tmp_path):
    write_captioned(tmp_path / "1_a", "img", "red, square")
    [subset] = read_blueprints(dataset_config(train_data_dir=str(tmp_path), caption_dropout_every_n_epochs=2))[
        0
    ].subsets
    process = CaptionProcessor.from_subset(subset)
    captions = [process("red, square", random.Random(0), epoch=epoch) for epoch in (1, 2, 3, 4)]
    assert captions == ["red, square", "", "red, square", ""]


def test_random_crop_varies_keeps_bucket_size_and_none_is_the_center_crop(tmp_path):
    record = _record(_noise_image(tmp_path / "n.png", (96, 64)), (64, 64), random_crop=True)
    rng = random.Random(0)
    augmentations = [draw_augmentation(record, rng) for _ in range(6)]
    assert all(0 <= a.crop[0] <= 32 and a.crop[1] == 0 for a in augmentations)
    tensors = [load_image_tensor(record, augmentation=a) for a in augmentations]
    assert all(t.shape == (3, 64, 64) for t in tensors)
    assert len({t.numpy().tobytes() for t in tensors}) > 1
    assert torch.equal(load_image_tensor(record, augmentation=Augmentation(crop=None)), load_image_tensor(record))
    assert torch.equal(load_image_tensor(record, augmentation=Augmentation(crop=(16, 0))), load_image_tensor(record))


def test_color_aug_changes_pixels_only_when_drawn(tmp_path):
    record = _record(_noise_image(tmp_path / "n.png", (32, 32)), (32, 32), color_aug=True)
    rng = random.Random(1)
    augmentations = [draw_augmentation(record, rng) for _ in range(400)]
    drawn = [a for a in augmentations if a != Augmentation()]
    assert 0.25 < len(drawn) / len(augmentations) < 0.41  # kohya: p = 0.33
    assert all((a.hue_shift == 0.0) != (a.gamma == 1.0) for a in drawn)  # one or the other, never both
    assert all(-8 <= a.hue_shift <= 8 and 0.95 <= a.gamma <= 1.05 for a in drawn)
    plain = load_image_tensor(record)
    assert torch.equal(load_image_tensor(record, augmentation=Augmentation()), plain)
    assert not torch.equal(load_image_tensor(record, augmentation=drawn[0]), plain)


def test_hue_shift_keeps_brightness_and_gamma_one_is_identity(tmp_path):
    record = _record(_noise_image(tmp_path / "n.png", (32, 32)), (32, 32))
    plain = load_image_tensor(record)
    shifted = load_image_tensor(record, augmentation=Augmentation(hue_shift=8.0))
    assert not torch.equal(shifted, plain)
    assert abs(shifted.amax(0).mean() - plain.amax(0).mean()) < 0.02  # HSV value (max channel) kept
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(apply_gamma(pixels, 1.0), pixels)
    assert apply_gamma(pixels, 1.05).astype(int).sum() > pixels.astype(int).sum()  # kohya's gamma brightens


@pytest.mark.parametrize("options", [{}, {"flip_aug": True}])
def test_plain_subsets_draw_nothing(tmp_path, options):
    record = _record(_noise_image(tmp_path / "n.png", (96, 64)), (64, 64), **options)
    rng = random.Random(5)
    state = rng.getstate()
    assert draw_augmentation(record, rng) == Augmentation()
    assert rng.getstate() == state


def test_crop_top_left_center_flip_and_sizes(tmp_path):
    record = _record(_noise_image(tmp_path / "n.png", (97, 64)), (64, 64))  # 33 spare columns
    assert crop_top_left(record) == (0, 16)
    assert crop_top_left(record, flip=True) == (0, 17)  # 97 - 16 - 64
    assert crop_top_left(record, flip=True, augmentation=Augmentation(crop=(4, 0))) == (0, 29)
    assert original_size_hw(record) == (64, 97) and target_size_hw(record) == (64, 64)


def test_flipped_crop_offset_matches_the_flipped_pixels(tmp_path):
    record = _record(_noise_image(tmp_path / "n.png", (96, 64)), (64, 64))
    with Image.open(record.path) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirror.png")
    mirror = _record(tmp_path / "mirror.png", (64, 64))
    top, left = crop_top_left(record, flip=True, augmentation=Augmentation(crop=(4, 0)))
    flipped = load_image_tensor(record, flip=True, augmentation=Augmentation(crop=(4, 0)))
    assert torch.equal(flipped, load_image_tensor(mirror, augmentation=Augmentation(crop=(left, top))))


def test_cache_problems_flag_pixel_augmentations_only_with_caching():
    subsets = [
        Subset(image_dir=Path("/d/1_plain")),
        Subset(image_dir=Path("/d/1_flip"), flip_aug=True),
        Subset(image_dir=Path("/d/1_color"), color_aug=True),
        Subset(image_dir=Path("/d/1_crop"), random_crop=True),
    ]
    problems = cache_problems(subsets + subsets[2:], cache_latents=True)  # repeats give no extra lines
    assert len(problems) == 2
    assert "/d/1_color" in problems[0] and "color_aug" in problems[0]
    assert "/d/1_crop" in problems[1] and "random_crop" in problems[1]
    assert all("train.cache_latents=false" in p for p in problems)
    assert cache_problems(subsets, cache_latents=False) == []
