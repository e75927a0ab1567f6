"""kohya fine-tuning subsets: ``metadata_file`` JSON (or JSONL) captions and tags, as kohya reads them."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from tests.data_helpers import dataset_config, write_image
from train.data import CaptionProcessor, count_images_per_subset, read_blueprints, scan_records, tag_frequency
from train.errors import DatasetError


def _setup(tmp_path: Path, metadata, subset_lines: str = "", name: str = "meta.json") -> Path:
    """Images a.png and b.jpg in imgs/, the metadata file, and a TOML with one fine-tuning subset."""
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b.jpg")
    meta = tmp_path / name
    meta.write_text(metadata if isinstance(metadata, str) else json.dumps(metadata), encoding="utf-8")
    path = tmp_path / "dataset.toml"
    text = f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\nmetadata_file = '{name}'\n{subset_lines}\n"
    path.write_text(text, encoding="utf-8")
    return path


def _scan(path: Path):
    return scan_records(read_blueprints(dataset_config(dataset_config=str(path))))


def _problems(path: Path) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        _scan(path)
    return caught.value.problems


def test_captions_and_tags_are_joined_with_the_caption_separator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metadata = {"a.png": {"caption": "a frog", "tags": "green, pond"}, "b": {"tags": "only tags"}}
    records = _scan(_setup(tmp_path, metadata))
    assert {r.path: r.caption for r in records} == {
        tmp_path / "imgs" / "a.png": "a frog,green, pond",  # kohya: caption + caption_separator + tags
        tmp_path / "imgs" / "b.jpg": "only tags",  # a stem key (merge_captions_to_metadata) finds b.jpg
    }
    assert records[0].subset.metadata_file == tmp_path / "meta.json"
    assert count_images_per_subset(records) == {tmp_path / "meta.json": 2}
    assert set(tag_frequency(records)) == {"meta.json"}  # kohya names it by the metadata file


def test_absolute_keys_need_no_image_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = write_image(tmp_path / "elsewhere" / "c.png")
    (tmp_path / "meta.json").write_text(json.dumps({str(image): {"caption": "c"}}), encoding="utf-8")
    path = tmp_path / "dataset.toml"
    path.write_text("[[datasets]]\n[[datasets.subsets]]\nmetadata_file = 'meta.json'\n", encoding="utf-8")
    assert [(r.path, r.caption) for r in _scan(path)] == [(image, "c")]


def test_multiline_caption_with_wildcards_gets_tags_on_each_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metadata = {"a.png": {"caption": "a frog\n\nfrog art", "tags": "green\npond"}}
    [record] = _scan(_setup(tmp_path, metadata, "enable_wildcard = true"))
    assert record.caption == "a frog,green,pond\nfrog art,green,pond"
    processor = CaptionProcessor.from_subset(record.subset)
    seen = {processor(record.caption, random.Random(seed)) for seed in range(20)}
    assert seen == {"a frog,green,pond", "frog art,green,pond"}


def test_jsonl_metadata(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [{"image_path": "a.png", "caption": "one", "tags": "t"}, {"image_path": "b.jpg", "caption": "two"}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    records = _scan(_setup(tmp_path, text, name="meta.jsonl"))
    assert [r.caption for r in records] == ["one,t", "two"]


def test_metadata_problems_are_collected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metadata = {"a.png": {"caption": "ok"}, "missing.png": {"caption": "x"}, "b": {"caption": ""}}
    problems = _problems(_setup(tmp_path, metadata))
    assert problems == [
        f"{tmp_path / 'meta.json'}: missing.png: image not found: {tmp_path / 'imgs' / 'missing.png'}",
        f"{tmp_path / 'meta.json'}: b: neither a caption nor tags",
    ]


def test_invalid_json_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [problem] = _problems(_setup(tmp_path, "{not json"))
    assert problem.startswith(f"{tmp_path / 'meta.json'}: invalid JSON")


def test_missing_metadata_file_is_reported_by_the_toml_reader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _setup(tmp_path, {})
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(path)))
    assert caught.value.problems == [f"datasets[0].subsets[0].metadata_file: file not found: {tmp_path / 'meta.json'}"]


def test_dreambooth_keys_in_a_fine_tuning_subset_are_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _setup(tmp_path, {"a.png": {"caption": "a"}}, "is_reg = true\nclass_tokens = 'x'")
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(path)))
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "datasets[0].subsets[0].is_reg",
        "datasets[0].subsets[0].class_tokens",
    ]
    assert "metadata_file" in caught.value.problems[0]


def test_dreambooth_and_fine_tuning_subsets_cannot_share_a_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _setup(tmp_path, {"a.png": {"caption": "a"}})
    path = tmp_path / "mixed.toml"
    path.write_text(
        "[[datasets]]\n[[datasets.subsets]]\nmetadata_file = 'meta.json'\nimage_dir = 'imgs'\n"
        "[[datasets.subsets]]\nimage_dir = 'imgs'\n",
        encoding="utf-8",
    )
    with pytest.raises(DatasetError) as caught:
        read_blueprints(dataset_config(dataset_config=str(path)))
    [problem] = caught.value.problems
    assert problem.startswith("datasets[0]: DreamBooth subsets") and "separate [[datasets]]" in problem


def test_duplicate_metadata_file_is_kept_once(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    path = _setup(tmp_path, {"a.png": {"caption": "a"}})
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "[[datasets.subsets]]\nimage_dir = 'imgs'\nmetadata_file = 'meta.json'\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        [blueprint] = read_blueprints(dataset_config(dataset_config=str(path)))
    assert len(blueprint.subsets) == 1
    assert f"ignore duplicated subset with metadata_file='{tmp_path / 'meta.json'}': use the first one" in caplog.text
