"""Read a kohya ``dataset_config`` (TOML, or JSON as kohya also reads): check every key, apply inheritance.

Subset keys may also sit in ``[general]`` or a ``[[datasets]]`` table, where they are
defaults for the subsets below; dataset keys may sit in ``[general]``. Every unknown,
misplaced or mistyped key is collected and reported in one ``DatasetError``. As in kohya,
relative paths are read from the current directory, and a subset whose ``image_dir``
(or ``metadata_file``) repeats an earlier one of the same dataset is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from train.data.kohya_keys import (
    DATASET_KEYS,
    DREAMBOOTH_ONLY_KEYS,
    GENERAL_KEYS,
    IGNORED,
    SUBSET_KEYS,
    SUBSET_ONLY_KEYS,
    BadValue,
    is_harmless,
    why_not_allowed,
)
from train.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class RawDataset:
    """One checked ``[[datasets]]`` entry with ``[general]`` defaults applied."""

    values: dict[str, Any] = field(default_factory=dict)  # dataset-level keys only
    subsets: list[dict[str, Any]] = field(default_factory=list)  # subset keys, paths resolved


def read_kohya_toml(path: Path) -> list[RawDataset]:
    document = _load(path)
    reader = _Reader(path.parent)
    datasets = reader.read_document(document)
    if reader.problems:
        raise DatasetError(reader.problems, header=f"Dataset config {path} has problems")
    for warning in reader.warnings:
        log.warning("%s: %s", path, warning)
    return datasets


def _load(path: Path) -> dict[str, Any]:
    header = f"Cannot read dataset config {path}"
    if not path.is_file():
        raise DatasetError([f"dataset.dataset_config: file not found: {path}"], header=header)
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetError([f"{path}: invalid JSON: {error}"], header=header) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DatasetError([f"{path}: invalid TOML: {error}"], header=header) from None
    except OSError as error:
        raise DatasetError([f"{path}: {error.strerror or error}"], header=header) from None
    if not isinstance(document, dict):
        raise DatasetError([f"{path}: expected a table with [general] and [[datasets]]"], header=header)
    return document


@dataclass
class _Reader:
    config_dir: Path  # only for a hint: kohya reads relative paths from the current directory
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
        defaults = {k: v for k, v in inherited.items() if k in SUBSET_KEYS}
        subset_tables = self._array(table.get("subsets"), f"{where}.subsets")
        if not table.get("subsets"):
            self.problems.append(f"{where}.subsets: no [[datasets.subsets]] table in this dataset")
        if len({"metadata_file" in t for t in subset_tables}) > 1:
            self.problems.append(
                f"{where}: DreamBooth subsets (image_dir only) and fine-tuning subsets (metadata_file) cannot be "
                "mixed in one dataset, as in kohya; put them in separate [[datasets]]"
            )
        subsets: list[dict[str, Any]] = []
        first_seen: dict[tuple[str, Path], str] = {}
        for j, subset_table in enumerate(subset_tables):
            subset_where = f"{where}.subsets[{j}]"
            values = self._subset(subset_table, subset_where)
            identity = _identity(values)
            if identity is not None and identity in first_seen:
                # kohya's DreamBoothDataset / FineTuningDataset keep the first and log this.
                self.warnings.append(
                    f"{subset_where}: ignore duplicated subset with {identity[0]}='{identity[1]}': use the first "
                    f"one ({first_seen[identity]})"
                )
                continue
            if identity is not None:
                first_seen[identity] = subset_where
            own_defaults = defaults
            if "metadata_file" in values:
                own_defaults = {k: v for k, v in defaults.items() if k not in DREAMBOOTH_ONLY_KEYS}
            subsets.append({**own_defaults, **values})
        values = {k: v for k, v in inherited.items() if k in DATASET_KEYS}
        return RawDataset(values=values, subsets=subsets)

    def _subset(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        values = self._table(table, where, {**SUBSET_KEYS, **SUBSET_ONLY_KEYS})
        if "metadata_file" in table:
            for key in DREAMBOOTH_ONLY_KEYS:
                if key in table:
                    self.problems.append(
                        f"{where}.{key}: not used by a fine-tuning subset (metadata_file), whose captions come "
                        "from the metadata file; remove it"
                    )
                    values.pop(key, None)
            if "metadata_file" in values:
                values["metadata_file"] = self._path(values["metadata_file"], f"{where}.metadata_file", folder=False)
        elif "image_dir" not in table:
            self.problems.append(f"{where}.image_dir: missing; every subset needs an image folder")
        if "image_dir" in values:
            values["image_dir"] = self._path(values["image_dir"], f"{where}.image_dir", folder=True)
        return values

    def _path(self, text: str, where: str, folder: bool) -> Path:
        """kohya opens paths as given, so a relative one is read from the current directory."""
        given = Path(text).expanduser()
        path = Path(os.path.normpath(given if given.is_absolute() else Path.cwd() / given))
        if path.is_dir() if folder else path.is_file():
            return path
        problem = f"{where}: {'folder' if folder else 'file'} not found: {path}"
        beside = self.config_dir / given
        if not given.is_absolute() and (beside.is_dir() if folder else beside.is_file()):
            problem += (
                f" (relative paths are read from the current directory, as kohya does; {beside} exists next to "
                "the dataset config: give an absolute path or start from that folder)"
            )
        self.problems.append(problem)
        return path

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
            elif key in IGNORED:
                if value is not False:
                    self.warnings.append(f"{where}.{key}: {IGNORED[key]}")
            elif not is_harmless(key, value):
                self.problems.append(f"{where}.{key}: {why_not_allowed(key)}")
        return values


def _identity(values: dict[str, Any]) -> tuple[str, Path] | None:
    """What kohya compares to find a duplicate subset: metadata_file for fine-tuning, else image_dir."""
    for key in ("metadata_file", "image_dir"):
        if isinstance(values.get(key), Path):
            return (key, values[key])
    return None
