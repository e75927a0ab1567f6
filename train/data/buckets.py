"""Aspect-ratio bucketing, kohya's arithmetic.

A bucket is a (width, height) that images are resized to cover and then center-cropped
to, so a batch holds one size and images keep most of their frame. The bucket list and
the nearest-aspect choice follow kohya's ``make_bucket_resolutions`` and
``BucketManager.select_bucket`` so the same image lands in the same bucket as in kohya.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.data.sources import DatasetBlueprint

Size = tuple[int, int]  # (width, height)


def round_min_max_to_steps(min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    """kohya rounds min down and max up to multiples of steps; never below one step."""
    low = max(steps, min_reso - min_reso % steps)
    high = max_reso if max_reso % steps == 0 else max_reso + steps - max_reso % steps
    return low, high


def make_buckets(resolution: Size, min_reso: int, max_reso: int, steps: int) -> list[Size]:
    """kohya's bucket list: for each width, the tallest height within the resolution's area."""
    min_reso, max_reso = round_min_max_to_steps(min_reso, max_reso, steps)
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // steps) * steps
    buckets = {(side, side)}
    for width in range(min_reso, max_reso + 1, steps):
        height = min(max_reso, (max_area // width) // steps * steps)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def cover_size(size: Size, bucket: Size) -> Size:
    """Smallest aspect-preserving resize of ``size`` that covers ``bucket`` (kohya's rounding)."""
    width, height = size
    if width / height > bucket[0] / bucket[1]:
        scale = bucket[1] / height  # wider than the bucket: match heights, crop the sides
    else:
        scale = bucket[0] / width
    return (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))


def resize_target(size: Size, bucket: Size, resized_size: Size | None = None) -> Size:
    """(w, h) an image is resized to before cropping to ``bucket``: never smaller than the bucket."""
    target = resized_size or cover_size(size, bucket)
    return (max(target[0], bucket[0]), max(target[1], bucket[1]))


def select_bucket(size: Size, buckets: list[Size], no_upscale: bool, resolution: Size, steps: int) -> tuple[Size, Size]:
    """(bucket, size to resize to before the center crop), as kohya's ``select_bucket``."""
    if not no_upscale:
        if size in buckets:
            return size, size
        aspect = size[0] / size[1]
        # min() keeps the first of equal errors, like kohya's argmin over the sorted list.
        bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))
        return bucket, cover_size(size, bucket)
    resized = _shrink_to_area(size, resolution[0] * resolution[1], steps)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return bucket, resized


def assign_bucket(size: Size, buckets: list[Size], no_upscale: bool, resolution: Size, steps: int) -> Size:
    """The bucket for an image of ``size``: nearest aspect ratio, or its own size with ``no_upscale``."""
    return select_bucket(size, buckets, no_upscale, resolution, steps)[0]


def _shrink_to_area(size: Size, max_area: int, steps: int) -> Size:
    """no_upscale: keep small images as they are; shrink large ones to the area, kohya's way."""
    width, height = size
    if width * height <= max_area:
        return size
    aspect = width / height
    resized_width = math.sqrt(max_area * aspect)
    resized_height = max_area / resized_width

    def to_steps(x: float) -> int:
        rounded = int(x + 0.5)
        return rounded - rounded % steps

    # Round either side to steps; keep whichever keeps the aspect ratio closer.
    width_rounded = to_steps(resized_width)
    height_for_width = to_steps(width_rounded / aspect)
    height_rounded = to_steps(resized_height)
    width_for_height = to_steps(height_rounded * aspect)
    width_error = abs(width_rounded / max(height_for_width, 1) - aspect)
    height_error = abs(max(width_for_height, 1) / max(height_rounded, 1) - aspect)
    if width_error < height_error:
        return (width_rounded, int(width_rounded / aspect + 0.5))
    return (int(height_rounded * aspect + 0.5), height_rounded)


@dataclass(frozen=True)
class BucketManager:
    """The buckets of one dataset and the rule that assigns images to them."""

    buckets: tuple[Size, ...]
    no_upscale: bool
    resolution: Size
    steps: int

    @classmethod
    def from_blueprint(cls, blueprint: DatasetBlueprint) -> BucketManager:
        if not blueprint.enable_bucket:
            # kohya without bucketing: one bucket at the resolution, images cover then crop.
            return cls((blueprint.resolution,), False, blueprint.resolution, blueprint.bucket_reso_steps)
        buckets = make_buckets(
            blueprint.resolution, blueprint.min_bucket_reso, blueprint.max_bucket_reso, blueprint.bucket_reso_steps
        )
        return cls(tuple(buckets), blueprint.bucket_no_upscale, blueprint.resolution, blueprint.bucket_reso_steps)

    def select(self, size: Size) -> tuple[Size, Size]:
        """(bucket, resized size before the crop) for an image of ``size``."""
        return select_bucket(size, list(self.buckets), self.no_upscale, self.resolution, self.steps)
