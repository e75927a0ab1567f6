"""kohya fine-tuning subsets: images and captions listed in a ``metadata_file``.

JSON: ``{image key: {"caption": ..., "tags": ...}, ...}`` as kohya's
merge_captions_to_metadata / merge_dd_tags_to_metadata write it; JSONL: one
``{"image_path", "caption", "tags"}`` per line. A key is an image path relative to the
subset's image_dir, an absolute path, or (without --full_path) an image's stem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.data.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from train.data.sources import Subset


class MetadataProblem(ValueError):
    """The metadata file or one of its entries is unusable; the message says why."""


def metadata_entries(subset: Subset, problems: list[str]) -> list[tuple[Path, str]]:
    """(image path, caption) for each usable entry; every bad entry adds a line to ``problems``."""
    where = subset.metadata_file
    try:
        metadata = load_metadata(where)
    except MetadataProblem as problem:
        problems.append(f"{where}: {problem}")
        return []
    if not metadata:
        problems.append(f"{where}: no image entries")
        return []
    entries = []
    stems: dict[Path, dict[str, list[Path]]] = {}
    for key, info in metadata.items():
        try:
            caption = _caption(info, subset)
            entries.append((_image_path(key, subset.image_dir, stems), caption))
        except MetadataProblem as problem:
            problems.append(f"{where}: {key}: {problem}")
    return entries


def load_metadata(path: Path) -> dict[str, Any]:
    """The metadata as kohya holds it: {image key: {"caption", "tags", ...}}."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MetadataProblem("not UTF-8 text") from None
    except OSError as error:
        raise MetadataProblem(f"cannot read file ({error.strerror or error})") from None
    if path.suffix.lower() == ".jsonl":
        return _jsonl(text)
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise MetadataProblem(f"invalid JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise MetadataProblem("expected a JSON object {image: {caption, tags}}")
    return metadata


def _jsonl(text: str) -> dict[str, Any]:
    metadata = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetadataProblem(f"line {number}: invalid JSON: {error}") from None
        if not isinstance(item, dict) or not isinstance(item.get("image_path"), str):
            raise MetadataProblem(f"line {number}: expected an object with an image_path")
        metadata[item["image_path"]] = {"caption": item.get("caption", ""), "tags": item.get("tags")}
    return metadata


def compose_caption(caption: str | None, tags: str | None, separator: str, wildcard: bool) -> str:
    """kohya's FineTuningDataset: caption + separator + tags; with wildcards, tags join every caption line."""
    caption = caption or ""
    if wildcard:
        if tags is None:
            return caption
        tags = tags.replace("\n", separator)
        lines = [f"{line}{separator}{tags}" for line in caption.split("\n") if line.strip() != ""]
        # kohya would train an empty caption here; the tags are the better caption.
        return "\n".join(lines) if lines else tags
    if tags:
        return caption + separator + tags if caption else tags
    return caption


def _caption(info: Any, subset: Subset) -> str:
    if not isinstance(info, dict):
        raise MetadataProblem(f"expected an object with caption and/or tags, got {info!r}")
    caption, tags = info.get("caption"), info.get("tags")
    for name, value in (("caption", caption), ("tags", tags)):
        if value is not None and not isinstance(value, str):
            raise MetadataProblem(f"{name} must be a string, got {value!r}")
    composed = compose_caption(caption, tags, subset.caption_separator, subset.enable_wildcard)
    if not composed.strip():
        raise MetadataProblem("neither a caption nor tags")
    return composed


def _image_path(key: str, image_dir: Path | None, stems: dict[Path, dict[str, list[Path]]]) -> Path:
    path = Path(key).expanduser()
    if not path.is_absolute():
        if image_dir is None:
            raise MetadataProblem("image_dir is required when image paths are relative (as in kohya)")
        path = image_dir / path
    if path.is_file():
        return path
    if path.suffix.lower() not in IMAGE_EXTENSIONS:  # a stem key: find the image beside it
        if path.parent not in stems:
            stems[path.parent] = _images_by_stem(path.parent)
        found = stems[path.parent].get(path.name, [])
        if len(found) == 1:
            return found[0]
        if found:
            raise MetadataProblem(f"several images match: {', '.join(p.name for p in found)}; use the file name")
    raise MetadataProblem(f"image not found: {path}")


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    """One listing per folder, so a metadata file of many stem keys reads each folder once."""
    index: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                index.setdefault(path.stem, []).append(path)
    return index
