"""Per-step pixel augmentation (kohya's random_crop and color_aug) and SDXL size conditioning.

Every random choice is made in ``draw_augmentation`` from the ``random.Random`` the trainer
passes, in kohya's order (crop offsets, then colour). ``load_image_tensor`` applies the drawn
``Augmentation`` without randomness, so a step is reproducible from (record, flip, augmentation).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from train.data.buckets import Size, resize_target

if TYPE_CHECKING:
    from train.data.records import ImageRecord
    from train.data.sources import Subset

# kohya's AugHelper.color_aug: with probability 0.33, a hue shift or a gamma (50/50).
COLOR_AUG_PROBABILITY = 0.33
HUE_SHIFT_LIMIT = 8.0  # OpenCV hue units: 180 is the full circle
GAMMA_RANGE = (0.95, 1.05)
OPENCV_HUE_CIRCLE = 180
PIL_HUE_CIRCLE = 256
# Subset options that change pixels every step, so they cannot work from cached latents.
PIXEL_AUGMENTATIONS = ("color_aug", "random_crop")


@dataclass(frozen=True)
class Augmentation:
    """One step's drawn augmentation; the default changes nothing."""

    crop: tuple[int, int] | None = None  # (left, top) of the crop in the resized image; None: center crop
    hue_shift: float = 0.0  # OpenCV hue units (180 = full circle)
    gamma: float = 1.0  # exponent on 0-255 values, as kohya applies it


def draw_augmentation(record: ImageRecord, rng: random.Random) -> Augmentation:
    """Draw what the record's subset asks for; no draw at all for a plain subset (rng untouched)."""
    subset = record.subset
    crop = _draw_crop(record, rng) if subset.random_crop else None
    hue_shift, gamma = _draw_color(rng) if subset.color_aug else (0.0, 1.0)
    return Augmentation(crop=crop, hue_shift=hue_shift, gamma=gamma)


def _draw_crop(record: ImageRecord, rng: random.Random) -> tuple[int, int]:
    """kohya's ``random.randint(0, spare)``: width first, then height, only on an axis with spare pixels."""
    width, height = resized_size(record)
    spare_w, spare_h = width - record.bucket[0], height - record.bucket[1]
    left = rng.randint(0, spare_w) if spare_w > 0 else 0
    top = rng.randint(0, spare_h) if spare_h > 0 else 0
    return (left, top)


def _draw_color(rng: random.Random) -> tuple[float, float]:
    """(hue_shift, gamma) with kohya's draws: ``random() <= 0.33`` applies, ``random() > 0.5`` picks hue."""
    if rng.random() > COLOR_AUG_PROBABILITY:
        return 0.0, 1.0
    if rng.random() > 0.5:
        return rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT), 1.0
    return 0.0, rng.uniform(*GAMMA_RANGE)


def shift_hue(pixels: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of (H, W, 3) uint8 RGB by ``shift`` OpenCV units; saturation and value kept.

    PIL's HSV hue runs 0-255 for the full circle, OpenCV's 0-180, hence the conversion.
    """
    steps = round(shift * PIL_HUE_CIRCLE / OPENCV_HUE_CIRCLE)
    if steps == 0:
        return pixels  # the HSV round trip is slightly lossy; skip it when nothing changes
    hue, saturation, value = Image.fromarray(np.ascontiguousarray(pixels)).convert("HSV").split()
    rotated = ((np.asarray(hue, dtype=np.int16) + steps) % PIL_HUE_CIRCLE).astype(np.uint8)
    return np.asarray(Image.merge("HSV", (Image.fromarray(rotated), saturation, value)).convert("RGB"))


def apply_gamma(pixels: np.ndarray, gamma: float) -> np.ndarray:
    """kohya's gamma: ``clip(pixels ** gamma, 0, 255)`` on 0-255 values, truncated to uint8."""
    return np.clip(pixels.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)


def resized_size(record: ImageRecord) -> Size:
    """(w, h) the image is resized to before the crop (kohya's resized_size)."""
    return resize_target(record.original_size, record.bucket, record.resized_size)


def crop_top_left(record: ImageRecord, flip: bool = False, augmentation: Augmentation | None = None) -> tuple[int, int]:
    """(top, left) of the crop in resized-image pixels: SDXL's crop conditioning (add_time_ids).

    The center offsets unless ``augmentation.crop`` is set; with ``flip`` the left offset is
    mirrored, because the crop then sits that far from the left of the flipped image.
    """
    width, height = resized_size(record)
    bucket_w, bucket_h = record.bucket
    crop = augmentation.crop if augmentation is not None else None
    left, top = crop if crop is not None else ((width - bucket_w) // 2, (height - bucket_h) // 2)
    if flip:
        left = width - left - bucket_w
    return (top, left)


def original_size_hw(record: ImageRecord) -> tuple[int, int]:
    """(h, w) of the image file: SDXL's original-size conditioning (add_time_ids)."""
    width, height = record.original_size
    return (height, width)


def target_size_hw(record: ImageRecord) -> tuple[int, int]:
    """(h, w) of the bucket the image is trained at: SDXL's target-size conditioning (add_time_ids)."""
    width, height = record.bucket
    return (height, width)


def cache_problems(items: Iterable[ImageRecord | Subset], cache_latents: bool) -> list[str]:
    """One line per subset whose color_aug/random_crop cannot work with cached latents (kohya refuses too).

    Cached latents are encoded once, so pixels cannot change per step; flip_aug is fine
    because both flips are cached.
    """
    if not cache_latents:
        return []
    subsets = dict.fromkeys(getattr(item, "subset", item) for item in items)
    problems = []
    for subset in subsets:
        keys = [key for key in PIXEL_AUGMENTATIONS if getattr(subset, key)]
        if keys:
            named = " and ".join(keys)
            verb = "changes" if len(keys) == 1 else "change"
            problems.append(
                f"subset {subset.source}: {named} {verb} the pixels every step, but cached latents are "
                f"encoded once; set train.cache_latents=false or turn {named} off"
            )
    return problems
