"""Read a kohya ``dataset_config`` TOML: check every key, apply kohya's inheritance.

Subset keys may also sit in ``[general]`` or a ``[[datasets]]`` table, where they are
defaults for the subsets below; dataset keys may sit in ``[general]``. Every unknown,
misplaced or mistyped key is collected and reported in one ``DatasetError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from train.errors import DatasetError


class BadValue(ValueError):
    """A TOML value of the wrong type or out of range; the message says what was expected."""


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"expected an integer, got {value!r}")
        if value < minimum:
            raise BadValue(f"must be >= {minimum}, got {value}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {value!r}")
    return value


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadValue(f"expected a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise BadValue(f"must be in [0, 1], got {value}")
    return float(value)


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
    "shuffle_caption": _boolean,
    "caption_dropout_rate": _rate,
    "caption_dropout_every_n_epochs": _integer(0),
    "caption_tag_dropout_rate": _rate,
    "flip_aug": _boolean,
    "color_aug": _boolean,
    "random_crop": _boolean,
}
SUBSET_ONLY_KEYS: dict[str, Callable[[Any], Any]] = {"image_dir": _text, "is_reg": _boolean}
DATASET_KEYS: dict[str, Callable[[Any], Any]] = {
    "resolution": _resolution,
    "batch_size": _integer(1),
    "enable_bucket": _boolean,
    "bucket_reso_steps": _integer(8),
    "min_bucket_reso": _integer(1),
    "max_bucket_reso": _integer(1),
    "bucket_no_upscale": _boolean,
}
# kohya options this trainer does not implement: accepted only at their kohya default.
UNSUPPORTED_AT_DEFAULT: dict[str, Any] = {
    "caption_prefix": "",
    "caption_suffix": "",
    "enable_wildcard": False,
    "secondary_separator": "",
    "token_warmup_min": 1,
    "token_warmup_step": 0,
    "alpha_mask": False,
    "cache_info": False,
}
GENERAL_KEYS = {**SUBSET_KEYS, **DATASET_KEYS}
ALL_KEYS = {**GENERAL_KEYS, **SUBSET_ONLY_KEYS, "subsets": None}


@dataclass
class RawDataset:
    """One checked ``[[datasets]]`` entry with ``[general]`` defaults applied."""

    values: dict[str, Any] = field(default_factory=dict)  # dataset-level keys only
    subsets: list[dict[str, Any]] = field(default_factory=list)  # subset keys, image_dir resolved


def read_kohya_toml(path: Path) -> list[RawDataset]:
    document = _load(path)
    problems: list[str] = []
    reader = _Reader(path.parent, problems)
    datasets = reader.read_document(document)
    if problems:
        raise DatasetError(problems, header=f"Dataset config {path} has problems")
    return datasets


def _load(path: Path) -> dict[str, Any]:
    header = f"Cannot read dataset config {path}"
    if not path.is_file():
        raise DatasetError([f"dataset.dataset_config: file not found: {path}"], header=header)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DatasetError([f"{path}: invalid TOML: {error}"], header=header) from None
    except OSError as error:
        raise DatasetError([f"{path}: {error.strerror or error}"], header=header) from None


@dataclass
class _Reader:
    base_dir: Path  # relative image_dir values resolve against the TOML's folder
    problems: list[str]

    def read_document(self, document: dict[str, Any]) -> list[RawDataset]:
        for key in document:
            if key not in ("general", "datasets"):
                self.problems.append(f"{key}: unknown top-level key (expected [general] and [[datasets]])")
        general = self._table(document.get("general", {}), "general", GENERAL_KEYS)
        tables = self._array(document.get("datasets"), "datasets")
        if not document.get("datasets"):
            self.problems.append("datasets: no [[datasets]] table")
        return [self._dataset(table, f"datasets[{i}]", general) for i, table in enumerate(tables)]

    def _dataset(self, table: dict[str, Any], where: str, general: dict[str, Any]) -> RawDataset:
        own = self._table({k: v for k, v in table.items() if k != "subsets"}, where, GENERAL_KEYS)
        inherited = {**general, **own}
        subset_defaults = {k: v for k, v in inherited.items() if k in SUBSET_KEYS}
        subsets = []
        subset_tables = self._array(table.get("subsets"), f"{where}.subsets")
        if not table.get("subsets"):
            self.problems.append(f"{where}.subsets: no [[datasets.subsets]] table in this dataset")
        for j, subset_table in enumerate(subset_tables):
            subsets.append({**subset_defaults, **self._subset(subset_table, f"{where}.subsets[{j}]")})
        values = {k: v for k, v in inherited.items() if k in DATASET_KEYS}
        return RawDataset(values=values, subsets=subsets)

    def _subset(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        values = self._table(table, where, {**SUBSET_KEYS, **SUBSET_ONLY_KEYS})
        if "image_dir" not in table:
            self.problems.append(f"{where}.image_dir: missing; every subset needs an image folder")
        elif "image_dir" in values:
            folder = Path(values["image_dir"]).expanduser()
            folder = folder if folder.is_absolute() else self.base_dir / folder
            if not folder.is_dir():
                self.problems.append(f"{where}.image_dir: folder not found: {folder}")
            values["image_dir"] = folder
        return values

    def _array(self, value: Any, where: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problems.append(f"{where}: expected an array of tables ([[{where}]])")
            return []
        return value

    def _table(self, table: Any, where: str, allowed: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
        if not isinstance(table, dict):
            self.problems.append(f"{where}: expected a table, got {table!r}")
            return {}
        values = {}
        for key, value in table.items():
            if key in allowed:
                try:
                    values[key] = allowed[key](value)
                except BadValue as error:
                    self.problems.append(f"{where}.{key}: {error}")
            elif not _is_harmless_default(key, value):
                self.problems.append(f"{where}.{key}: {_why_not_allowed(key)}")
        return values


def _is_harmless_default(key: str, value: Any) -> bool:
    """An unsupported kohya option left at its default changes nothing, so kohya files still load."""
    if key not in UNSUPPORTED_AT_DEFAULT:
        return False
    default = UNSUPPORTED_AT_DEFAULT[key]
    return type(value) is type(default) and value == default


def _why_not_allowed(key: str) -> str:
    if key in UNSUPPORTED_AT_DEFAULT:
        default = UNSUPPORTED_AT_DEFAULT[key]
        return f"kohya option not supported by this trainer; remove it or set it to {default!r}"
    if key in SUBSET_ONLY_KEYS:
        return "belongs in a [[datasets.subsets]] table"
    if key in DATASET_KEYS:
        return "belongs in [[datasets]] or [general], not in a subset"
    if key == "subsets":
        return "belongs in a [[datasets]] table"
    close = difflib.get_close_matches(key, [*ALL_KEYS, *UNSUPPORTED_AT_DEFAULT], n=1)
    return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
