"""Small builders shared by the tests/test_data_*.py files: images, captions, configs."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from train.config import DatasetConfig


def write_image(path: Path, size: tuple[int, int] = (64, 64), color=(200, 30, 30), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def write_captioned(folder: Path, stem: str, caption: str = "red, square", size=(64, 64)) -> Path:
    image = write_image(folder / f"{stem}.png", size)
    (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return image


def dataset_config(**overrides) -> DatasetConfig:
    return DatasetConfig(**overrides)
