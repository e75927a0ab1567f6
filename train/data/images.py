"""Find, check and load training images.

``probe_image`` fully decodes a file so truncated or corrupt images are found while
scanning, before any GPU time. ``load_image_tensor`` turns a record into the tensor the
VAE encodes: transparency onto white, resize to cover the bucket, center crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from train.data.buckets import Size, cover_size
from train.errors import DatasetError

if TYPE_CHECKING:
    from train.data.records import ImageRecord

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageProblem(ValueError):
    """A file that cannot be used as an image; the message says why."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; hidden files (e.g. macOS ``._x.png``) skipped."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def probe_image(path: Path) -> Size:
    """(width, height) of an image that verifies and decodes completely, else ``ImageProblem``."""
    try:
        if path.stat().st_size == 0:
            raise ImageProblem("file is empty (0 bytes)")
        with Image.open(path) as image:
            image.verify()  # checks structure (PNG CRCs); the image cannot be used after this
        with Image.open(path) as image:
            image.load()  # decodes every pixel: finds truncated data that verify lets through
            size = image.size
    except ImageProblem:
        raise
    except Exception as error:  # PIL raises many types for bad files; each is a user problem here
        raise ImageProblem(f"not a readable image ({type(error).__name__}: {error})") from None
    if size[0] == 0 or size[1] == 0:
        raise ImageProblem(f"image has zero size {size[0]}x{size[1]}")
    return size


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """RGB image; any transparency (alpha band or palette/colour key) is composited onto white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale: convert("RGB") would clip to white, so scale to 8 bits first.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8))
    if image.mode not in ALPHA_MODES and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def fit_to_bucket(image: Image.Image, bucket: Size, resized_size: Size | None = None) -> Image.Image:
    """Resize to ``resized_size`` (default: just cover the bucket), then center crop to it."""
    target = resized_size or cover_size(image.size, bucket)
    target = (max(target[0], bucket[0]), max(target[1], bucket[1]))
    if target != image.size:
        shrinking = target[0] < image.size[0] and target[1] < image.size[1]
        # kohya: area averaging when shrinking, Lanczos otherwise.
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
        image = image.resize(target, resample)
    left = (target[0] - bucket[0]) // 2
    top = (target[1] - bucket[1]) // 2
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


def load_image_tensor(record: ImageRecord, flip: bool = False) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1] at ``record.bucket``; ``flip`` mirrors left-right."""
    try:
        with Image.open(record.path) as image:
            image.load()
            rgb = to_rgb_on_white(image)
    except Exception as error:  # the file changed or vanished since it was scanned
        raise DatasetError([f"{record.path}: cannot read image ({error})"], header="Image load failed") from None
    pixels = np.asarray(fit_to_bucket(rgb, record.bucket, record.resized_size), dtype=np.float32)
    if flip:
        pixels = pixels[:, ::-1]
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()
    return tensor / 127.5 - 1.0
