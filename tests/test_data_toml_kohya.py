"""kohya dataset_config TOML read as kohya's config_util reads it: defaults, paths, duplicates, keys."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.data_helpers import dataset_config, write_captioned, write_image
from train.data import read_blueprints, scan_records
from train.data.split import split_validation
from train.errors import DatasetError


def _toml(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _read(path: Path, **overrides):
    return read_blueprints(dataset_config(dataset_config=str(path), **overrides))


def _problems(path: Path, **overrides) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        _read(path, **overrides)
    assert str(path) in str(caught.value)
    return caught.value.problems


def _one_subset(tmp_path: Path, subset_lines: str, dataset_lines: str = "") -> Path:
    write_image(tmp_path / "imgs" / "x.png")
    (tmp_path / "imgs" / "x.caption").write_text("a, b", encoding="utf-8")
    return _toml(tmp_path, f"[[datasets]]\n{dataset_lines}\n[[datasets.subsets]]\nimage_dir = 'imgs'\n{subset_lines}\n")


# --- 1. kohya's defaults ------------------------------------------------------------------------


def test_toml_caption_extension_defaults_to_dot_caption(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "imgs" / "x.png")
    (tmp_path / "imgs" / "x.caption").write_text("from caption", encoding="utf-8")
    (tmp_path / "imgs" / "x.txt").write_text("from txt", encoding="utf-8")
    [blueprint] = _read(_toml(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n"))
    assert blueprint.subsets[0].caption_extension == ".caption"
    assert [r.caption for r in scan_records([blueprint])] == ["from caption"]


def test_toml_caption_extension_from_config_or_toml_wins_over_kohya_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _one_subset(tmp_path, "")
    assert _read(path, caption_extension=".txt")[0].subsets[0].caption_extension == ".txt"
    path = _one_subset(tmp_path, "caption_extension = '.tags'")
    assert _read(path, caption_extension=".txt")[0].subsets[0].caption_extension == ".tags"


def test_folder_mode_keeps_txt_captions(tmp_path):
    write_captioned(tmp_path / "1_a", "from txt")
    [blueprint] = read_blueprints(dataset_config(train_data_dir=str(tmp_path)))
    assert blueprint.subsets[0].caption_extension == ".txt" and blueprint.enable_bucket


def test_toml_enable_bucket_is_off_unless_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _read(_one_subset(tmp_path, ""))[0].enable_bucket is False
    assert _read(_one_subset(tmp_path, ""), enable_bucket=True)[0].enable_bucket is True
    assert _read(_one_subset(tmp_path, "", "enable_bucket = true"))[0].enable_bucket is True


def test_relative_image_dir_is_read_from_the_current_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    write_image(work / "imgs" / "x.png")
    path = _toml(tmp_path / "configs", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    monkeypatch.chdir(work)
    [blueprint] = _read(path)
    assert blueprint.subsets[0].image_dir == work / "imgs"


def test_relative_image_dir_next_to_the_toml_only_gets_a_hint(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    write_image(configs / "imgs" / "x.png")
    path = _toml(configs, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    monkeypatch.chdir(tmp_path)
    [problem] = _problems(path)
    assert problem.startswith(f"datasets[0].subsets[0].image_dir: folder not found: {tmp_path / 'imgs'}")
    assert "current directory" in problem and str(configs / "imgs") in problem


# --- 2. the same image_dir twice in one dataset ---------------------------------------------------


def test_duplicate_image_dir_in_one_dataset_is_kept_once_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "imgs" / "x.png")
    text = (
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\nnum_repeats = 3\n"
        "[[datasets.subsets]]\nimage_dir = './imgs'\nnum_repeats = 7\n"
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\nnum_repeats = 5\n"
    )
    with caplog.at_level(logging.WARNING):
        first, second = _read(_toml(tmp_path, text))
    assert [s.num_repeats for s in first.subsets] == [3]  # the first one is used, as kohya does
    assert [s.num_repeats for s in second.subsets] == [5]  # another dataset is not a duplicate
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "datasets[0].subsets[1]" in warning
    assert f"ignore duplicated subset with image_dir='{tmp_path / 'imgs'}': use the first one" in warning


# --- 3. keys kohya has: implemented, or refused with one clear message ----------------------------


def test_caption_keys_are_read_and_inherited(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    general = (
        "[general]\ncaption_prefix = 'masterpiece,'\nsecondary_separator = ';;;'\n"
        "enable_wildcard = true\ntoken_warmup_min = 2\ntoken_warmup_step = 0.5\n"
    )
    write_image(tmp_path / "imgs" / "x.png")
    text = general + "[[datasets]]\ncaption_suffix = ', end'\n[[datasets.subsets]]\nimage_dir = 'imgs'\n"
    [blueprint] = _read(_toml(tmp_path, text))
    subset = blueprint.subsets[0]
    assert (subset.caption_prefix, subset.caption_suffix) == ("masterpiece,", ", end")
    assert (subset.secondary_separator, subset.enable_wildcard) == (";;;", True)
    assert (subset.token_warmup_min, subset.token_warmup_step) == (2, 0.5)


def test_validation_split_and_seed_per_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(4):
        write_captioned(tmp_path / "a", f"a{i}")
        write_captioned(tmp_path / "b", f"b{i}")
    text = (
        "[general]\ncaption_extension = '.txt'\n"
        "[[datasets]]\nvalidation_split = 0.5\nvalidation_seed = 9\n[[datasets.subsets]]\nimage_dir = 'a'\n"
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'b'\n"
    )
    blueprints = _read(_toml(tmp_path, text))
    assert (blueprints[0].subsets[0].validation_split, blueprints[0].subsets[0].validation_seed) == (0.5, 9)
    assert blueprints[1].subsets[0].validation_split is None  # falls back to dataset.validation_split
    records = scan_records(blueprints)
    train, val = split_validation(records, 0.25, seed=0)
    assert sorted(r.path.parent.name for r in val) == ["a", "a", "b"]  # 0.5 x 4, then 0.25 x 4
    assert split_validation(records, 0.0, seed=0)[1] == [r for r in val if r.path.parent.name == "a"]


def test_validation_split_in_a_subset_is_misplaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [problem] = _problems(_one_subset(tmp_path, "validation_split = 0.1"))
    assert problem == "datasets[0].subsets[0].validation_split: belongs in [[datasets]] or [general], not in a subset"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("face_crop_aug_range = [1.0, 2.0]", "face crop"),
        ("resize_interpolation = 'bicubic'", "Lanczos"),
        ("alpha_mask = true", "white"),
        ("custom_attributes = {a = 1}", "remove it"),
        ("conditioning_data_dir = 'imgs'", "ControlNet"),
    ],
)
def test_kohya_keys_not_implemented_get_one_clear_message(tmp_path, monkeypatch, line, words):
    monkeypatch.chdir(tmp_path)
    [problem] = _problems(_one_subset(tmp_path, line))
    key = line.split(" =")[0]
    assert problem.startswith(f"datasets[0].subsets[0].{key}: ")
    assert "not supported by this trainer" in problem and words in problem


def test_network_multiplier_is_refused_at_dataset_level(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [problem] = _problems(_one_subset(tmp_path, "", "network_multiplier = 0.5"))
    assert problem.startswith("datasets[0].network_multiplier: kohya option not supported by this trainer")


def test_cache_info_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        [blueprint] = _read(_one_subset(tmp_path, "cache_info = true"))
    assert blueprint.subsets[0].image_dir == tmp_path / "imgs"
    assert "datasets[0].subsets[0].cache_info" in caplog.text and "remove it" in caplog.text


def test_json_dataset_config_is_read_like_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "imgs" / "x.png")
    path = tmp_path / "dataset.json"
    path.write_text('{"datasets": [{"batch_size": 2, "subsets": [{"image_dir": "imgs"}]}]}', encoding="utf-8")
    [blueprint] = _read(path)
    assert blueprint.batch_size == 2 and blueprint.subsets[0].image_dir == tmp_path / "imgs"
