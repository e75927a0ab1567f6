"""Find, check and load training images.

``probe_image`` fully decodes a file so truncated or corrupt images are found while
scanning, before any GPU time. ``load_image_tensor`` turns a record into the tensor the
VAE encodes: transparency onto white, resize to cover the bucket, crop (center, or at
an ``Augmentation``'s offset), colour augmentation, flip. Loading is a pure function of
its inputs; the random draws live in ``train.data.augment``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from train.data.augment import Augmentation, apply_gamma, shift_hue
from train.data.buckets import Size, resize_target
from train.errors import DatasetError

if TYPE_CHECKING:
    import torch

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


def fit_to_bucket(
    image: Image.Image, bucket: Size, resized_size: Size | None = None, crop: tuple[int, int] | None = None
) -> Image.Image:
    """Resize to ``resized_size`` (default: just cover the bucket), then crop to the bucket.

    ``crop`` is the (left, top) offset of the crop in the resized image; None crops the center.
    """
    target = resize_target(image.size, bucket, resized_size)
    if target != image.size:
        shrinking = target[0] < image.size[0] and target[1] < image.size[1]
        # kohya: area averaging when shrinking, Lanczos otherwise.
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
        image = image.resize(target, resample)
    left, top = crop if crop is not None else ((target[0] - bucket[0]) // 2, (target[1] - bucket[1]) // 2)
    if not (0 <= left <= target[0] - bucket[0] and 0 <= top <= target[1] - bucket[1]):
        # PIL would pad an out-of-range crop with black instead of failing.
        raise ValueError(f"crop offset {(left, top)} does not fit bucket {bucket} in resized image {target}")
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


def load_image_tensor(
    record: ImageRecord, flip: bool = False, augmentation: Augmentation | None = None
) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1] at ``record.bucket``; ``flip`` mirrors left-right.

    ``augmentation`` (from ``draw_augmentation``) sets the crop offset and colour change,
    applied before the flip as kohya does; None gives the plain center crop.
    """
    try:
        with Image.open(record.path) as image:
            image.load()
            rgb = to_rgb_on_white(image)
    except Exception as error:  # the file changed or vanished since it was scanned
        raise DatasetError([f"{record.path}: cannot read image ({error})"], header="Image load failed") from None
    crop = augmentation.crop if augmentation is not None else None
    pixels = np.asarray(fit_to_bucket(rgb, record.bucket, record.resized_size, crop))
    if augmentation is not None:
        pixels = apply_gamma(shift_hue(pixels, augmentation.hue_shift), augmentation.gamma)
    pixels = pixels.astype(np.float32)
    if flip:
        pixels = pixels[:, ::-1]
    import torch  # here, not at the top: the dataset pre-flight runs without torch

    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()
    return tensor / 127.5 - 1.0
