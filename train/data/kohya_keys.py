"""The keys of a kohya ``dataset_config``: where each may appear, its check, and what we say about the rest.

Placement follows kohya's ``config_util.ConfigSanitizer``: subset keys may also sit in
``[general]`` or ``[[datasets]]`` as defaults; dataset keys may sit in ``[general]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any


class BadValue(ValueError):
    """A value of the wrong type or out of range; the message says what was expected."""


def _integer(minimum: int | None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise BadValue(f"must be >= {minimum}, got {value}")
        return value

    return check


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(f"expected a number, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {value!r}")
    return value


def _rate(value: Any) -> float:
    if not 0.0 <= _number(value) <= 1.0:
        raise BadValue(f"must be in [0, 1], got {value}")
    return float(value)


def _fraction(value: Any) -> float:
    if not 0.0 <= _number(value) < 1.0:  # 1.0 would leave nothing to train on
        raise BadValue(f"must be in [0, 1), got {value}")
    return float(value)


def _warmup_step(value: Any) -> float:
    # kohya: below 1 it is a fraction of max_train_steps, else a step count.
    if _number(value) < 0:
        raise BadValue(f"must be >= 0, got {value}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected a string, got {value!r}")
    return value


def _separator(value: Any) -> str:
    if not _text(value):
        raise BadValue("must not be empty")
    return value


def _extension(value: Any) -> str:
    if not _text(value).startswith("."):
        raise BadValue(f"must start with '.', got {value!r}")
    return value


def _resolution(value: Any) -> tuple[int, int]:
    sizes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sizes, list) or len(sizes) not in (1, 2):
        raise BadValue(f"expected an integer or [width, height], got {value!r}")
    checked = [_integer(1)(size) for size in sizes]
    return (checked[0], checked[-1])


# Keys that may appear in a subset, and as defaults in [[datasets]] and [general].
SUBSET_KEYS: dict[str, Callable[[Any], Any]] = {
    "caption_extension": _extension,
    "num_repeats": _integer(1),
    "class_tokens": _text,
    "keep_tokens": _integer(0),
    "keep_tokens_separator": _text,
    "caption_separator": _separator,
    "secondary_separator": _text,
    "caption_prefix": _text,
    "caption_suffix": _text,
    "enable_wildcard": _boolean,
    "shuffle_caption": _boolean,
    "token_warmup_min": _integer(0),
    "token_warmup_step": _warmup_step,
    "caption_dropout_rate": _rate,
    "caption_dropout_every_n_epochs": _integer(0),
    "caption_tag_dropout_rate": _rate,
    "flip_aug": _boolean,
    "color_aug": _boolean,
    "random_crop": _boolean,
}
SUBSET_ONLY_KEYS: dict[str, Callable[[Any], Any]] = {"image_dir": _text, "is_reg": _boolean, "metadata_file": _text}
# kohya's DreamBooth-only keys: a fine-tuning subset (metadata_file) takes its captions from the JSON.
DREAMBOOTH_ONLY_KEYS = ("is_reg", "class_tokens", "caption_extension")
DATASET_KEYS: dict[str, Callable[[Any], Any]] = {
    "resolution": _resolution,
    "batch_size": _integer(1),
    "enable_bucket": _boolean,
    "bucket_reso_steps": _integer(8),
    "min_bucket_reso": _integer(1),
    "max_bucket_reso": _integer(1),
    "bucket_no_upscale": _boolean,
    "validation_split": _fraction,
    "validation_seed": _integer(None),
}
GENERAL_KEYS = {**SUBSET_KEYS, **DATASET_KEYS}

_NOT_SUPPORTED = "kohya option not supported by this trainer: "
# kohya keys this trainer does not implement: (value that changes nothing, or None, and what to do).
REFUSED: dict[str, tuple[Any, str]] = {
    "face_crop_aug_range": (
        None,
        "face crop augmentation is not implemented; remove it (images are center-cropped to their bucket, "
        "or at random with random_crop = true)",
    ),
    "resize_interpolation": (
        None,
        "remove it; images are resized as kohya does by default, area averaging when shrinking and Lanczos "
        "when enlarging",
    ),
    "alpha_mask": (
        False,
        "transparency is not used as a loss mask; remove it or set it to false (transparent pixels are "
        "composited on white and trained like the rest)",
    ),
    "custom_attributes": ({}, "only custom kohya scripts read it; remove it"),
    "network_multiplier": (1.0, "every dataset trains the network at multiplier 1.0; remove it or set it to 1.0"),
    "conditioning_data_dir": (None, "ControlNet datasets cannot train a LoRA here; remove the subset"),
}
# Keys that change nothing in training: accepted with a warning.
IGNORED: dict[str, str] = {
    "cache_info": "kohya's image-info cache (metadata_cache.json) is not used, sizes and captions are read from "
    "the files each run; remove it to silence this warning",
}
ALL_KEYS = [*GENERAL_KEYS, *SUBSET_ONLY_KEYS, "subsets", *REFUSED, *IGNORED]


def is_harmless(key: str, value: Any) -> bool:
    """A refused option at the value that changes nothing, so kohya files that spell it out still load."""
    if key not in REFUSED or REFUSED[key][0] is None:
        return False
    default = REFUSED[key][0]
    return type(value) is type(default) and value == default


def why_not_allowed(key: str) -> str:
    if key in REFUSED:
        return _NOT_SUPPORTED + REFUSED[key][1]
    if key in SUBSET_ONLY_KEYS:
        return "belongs in a [[datasets.subsets]] table"
    if key in DATASET_KEYS:
        return "belongs in [[datasets]] or [general], not in a subset"
    if key == "subsets":
        return "belongs in a [[datasets]] table"
    close = difflib.get_close_matches(key, ALL_KEYS, n=1)
    return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
