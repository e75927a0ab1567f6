"""Bad input stops with one DatasetError that names every bad file or key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data_helpers import dataset_config, write_captioned, write_image
from train.data import read_blueprints, scan_records
from train.errors import DatasetError, UserError


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """kohya reads a TOML's relative image_dir from the current directory."""
    monkeypatch.chdir(tmp_path)


def _scan_folder(root: Path) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        scan_records(read_blueprints(dataset_config(train_data_dir=str(root))))
    return caught.value


def _read_toml(tmp_path: Path, text: str) -> DatasetError:
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(path)))
    assert str(path) in str(caught.value)
    return caught.value


def _valid_subset(tmp_path: Path) -> None:
    write_captioned(tmp_path / "imgs", "ok")


def test_truncated_png_is_reported(tmp_path):
    good = write_captioned(tmp_path / "2_a", "good", size=(64, 64))
    bad = tmp_path / "2_a" / "bad.png"
    bad.write_bytes(good.read_bytes()[:-40])  # cut inside the image data
    (tmp_path / "2_a" / "bad.txt").write_text("x")
    error = _scan_folder(tmp_path)
    assert len(error.problems) == 1 and error.problems[0].startswith(f"{bad}: not a readable image")


def test_text_file_with_image_extension_is_reported(tmp_path):
    write_captioned(tmp_path / "1_a", "good")
    fake = tmp_path / "1_a" / "fake.jpg"
    fake.write_text("this is not a jpeg")
    (tmp_path / "1_a" / "fake.txt").write_text("x")
    error = _scan_folder(tmp_path)
    assert len(error.problems) == 1 and error.problems[0].startswith(f"{fake}: not a readable image")


def test_zero_byte_image_is_reported(tmp_path):
    write_captioned(tmp_path / "1_a", "good")
    empty = tmp_path / "1_a" / "empty.png"
    empty.write_bytes(b"")
    (tmp_path / "1_a" / "empty.txt").write_text("x")
    assert _scan_folder(tmp_path).problems == [f"{empty}: file is empty (0 bytes)"]


def test_missing_caption_without_class_tokens_is_reported(tmp_path):
    write_captioned(tmp_path, "captioned")
    lonely = write_image(tmp_path / "lonely.png")
    error = _scan_folder(tmp_path)
    assert len(error.problems) == 1 and error.problems[0].startswith(f"{lonely}: no caption file lonely.txt")


def test_empty_train_data_dir_is_reported(tmp_path):
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(train_data_dir=str(tmp_path)))
    assert str(tmp_path) in str(caught.value) and "dataset.train_data_dir" in str(caught.value)


def test_empty_dataset_overall_is_reported():
    with pytest.raises(DatasetError, match="the dataset is empty"):
        scan_records([])


def test_empty_subset_folder_is_reported(tmp_path):
    write_captioned(tmp_path / "2_full", "img")
    (tmp_path / "3_empty").mkdir()
    error = _scan_folder(tmp_path)
    assert len(error.problems) == 1 and error.problems[0].startswith(f"{tmp_path / '3_empty'}: empty subset folder")


def test_bad_toml_syntax_is_reported(tmp_path):
    error = _read_toml(tmp_path, "[[datasets]\nresolution = 512\n")
    assert "invalid TOML" in error.problems[0]


def test_unknown_toml_key_is_reported(tmp_path):
    _valid_subset(tmp_path)
    error = _read_toml(tmp_path, "[[datasets]]\nbatch_sise = 2\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    assert error.problems == ["datasets[0].batch_sise: unknown key; did you mean 'batch_size'?"]


def test_wrong_type_in_toml_is_reported(tmp_path):
    _valid_subset(tmp_path)
    error = _read_toml(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\nnum_repeats = 'three'\n")
    assert error.problems == ["datasets[0].subsets[0].num_repeats: expected an integer, got 'three'"]


def test_missing_image_dir_key_is_reported(tmp_path):
    error = _read_toml(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n")
    assert error.problems == ["datasets[0].subsets[0].image_dir: missing; every subset needs an image folder"]


def test_image_dir_that_does_not_exist_is_reported(tmp_path):
    error = _read_toml(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nowhere'\n")
    assert error.problems == [f"datasets[0].subsets[0].image_dir: folder not found: {tmp_path / 'nowhere'}"]


def test_missing_toml_file_is_reported(tmp_path):
    missing = tmp_path / "absent.toml"
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(missing)))
    assert caught.value.problems == [f"dataset.dataset_config: file not found: {missing}"]


def test_missing_train_data_dir_is_reported(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(train_data_dir=str(missing)))
    assert caught.value.problems == [f"dataset.train_data_dir: folder not found: {missing}"]


def test_no_dataset_configured_names_train_data_dir():
    with pytest.raises(DatasetError, match="dataset.train_data_dir: not set"):
        read_blueprints(dataset_config())


def test_impossible_bucket_settings_are_reported(tmp_path):
    write_captioned(tmp_path / "1_a", "img")
    with pytest.raises(DatasetError, match="smaller than bucket_reso_steps 64"):
        read_blueprints(dataset_config(train_data_dir=str(tmp_path), resolution=[32, 32]))


def test_many_problems_are_reported_together(tmp_path):
    write_captioned(tmp_path, "good")  # loose images: a subset without class tokens
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "corrupt.txt").write_text("x")
    uncaptioned = write_image(tmp_path / "uncaptioned.png")
    (tmp_path / "3_empty").mkdir()
    error = _scan_folder(tmp_path)
    assert isinstance(error, UserError) and len(error.problems) == 3
    message = str(error)
    for culprit in (corrupt, uncaptioned, tmp_path / "3_empty"):
        assert str(culprit) in message
    assert message.startswith("The dataset has problems (3):")


def test_many_toml_problems_are_reported_together(tmp_path):
    text = (
        "[general]\nshuffle_caption = 'yes'\n"
        "[[datasets]]\nresolution = [1, 2, 3]\n"
        "[[datasets.subsets]]\nimage_dir = 'nowhere'\ncaption_dropout_rate = 1.5\nflip = true\n"
    )
    error = _read_toml(tmp_path, text)
    keys = [problem.split(":")[0] for problem in error.problems]
    assert keys == [
        "general.shuffle_caption",
        "datasets[0].resolution",
        "datasets[0].subsets[0].caption_dropout_rate",
        "datasets[0].subsets[0].flip",
        "datasets[0].subsets[0].image_dir",
    ]
