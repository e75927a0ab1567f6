"""A small deterministic demo dataset in kohya layout: coloured shapes with tag captions.

It exists so the default run and the tests have real files to read: a few aspect ratios
(so bucketing has work to do) and one transparent PNG (so compositing onto white does).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from train.atomic import atomic_dir
from train.errors import ConfigError

SUBSET_FOLDER = "4_shapes"  # kohya layout: 4 repeats of the "shapes" subset
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapeImage:
    width: int
    height: int
    shape: str
    colour: str
    background: str  # "transparent" for the RGBA image
    box: tuple[int, int, int, int]  # the shape's bounding box

    @property
    def caption(self) -> str:
        # A transparent background is trained on white, so the caption says white.
        background = "white" if self.background == "transparent" else self.background
        return f"{self.colour} {self.shape}, {background} background, shape"


def make_synthetic_dataset(root: Path, num_images: int = 8, seed: int = 0, size: int = 64) -> Path:
    """Write the demo dataset under ``root`` (``root/4_shapes/000.png`` + ``000.txt`` ...).

    An existing non-empty ``root`` is returned untouched; a crash never leaves half a dataset.
    """
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        return root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"dataset.train_data_dir: {root} exists and is not a folder")
    if num_images < 1 or size < 16:
        raise ConfigError(f"dataset.synthetic: need num_images >= 1 and size >= 16, got {num_images}, {size}")
    rng = random.Random(seed)
    with atomic_dir(root) as staging:
        folder = staging / SUBSET_FOLDER
        folder.mkdir()
        for index in range(num_images):
            transparent = index == num_images - 1
            spec = _pick_image(rng, index, size, transparent)
            _draw(spec).save(folder / f"{index:03d}.png")
            (folder / f"{index:03d}.txt").write_text(spec.caption + "\n", encoding="utf-8")
    return root


def _image_size(index: int, size: int) -> tuple[int, int]:
    """Square, landscape 3:2 and portrait 2:3 in turn, multiples of 8 for the VAE."""
    long_side = (size * 3 // 2) // 8 * 8
    return [(size, size), (long_side, size), (size, long_side)][index % 3]


def _pick_image(rng: random.Random, index: int, size: int, transparent: bool) -> ShapeImage:
    width, height = _image_size(index, size)
    colour, background = rng.sample(sorted(COLOURS), 2)
    side = rng.randint(min(width, height) // 3, min(width, height) * 3 // 4)
    left = rng.randint(0, width - side)
    top = rng.randint(0, height - side)
    shape = SHAPES[rng.randrange(len(SHAPES))]
    return ShapeImage(
        width, height, shape, colour, "transparent" if transparent else background, (left, top, left + side, top + side)
    )


def _draw(spec: ShapeImage) -> Image.Image:
    if spec.background == "transparent":
        image = Image.new("RGBA", (spec.width, spec.height), (0, 0, 0, 0))
    else:
        image = Image.new("RGB", (spec.width, spec.height), COLOURS[spec.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[spec.colour] + (255,) if image.mode == "RGBA" else COLOURS[spec.colour]
    left, top, right, bottom = spec.box
    if spec.shape == "circle":
        draw.ellipse(spec.box, fill=fill)
    elif spec.shape == "square":
        draw.rectangle(spec.box, fill=fill)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)
    return image
