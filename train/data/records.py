"""Scan every subset into ``ImageRecord``s, collecting every bad file before failing once.

A user with ten broken files should learn about all ten from one run, not one per run.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from train.data.batches import sample_counts
from train.data.buckets import BucketManager, Size
from train.data.captions import CaptionProblem, read_caption
from train.data.finetune import metadata_entries
from train.data.images import IMAGE_EXTENSIONS, ImageProblem, list_images, probe_image
from train.data.sources import DatasetBlueprint, Subset
from train.errors import DatasetError


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    # raw caption: the caption file's first line (every line with enable_wildcard), the subset's
    # class_tokens, or a fine-tuning subset's caption and tags from its metadata file
    caption: str
    subset: Subset
    dataset_index: int  # index of its DatasetBlueprint
    original_size: Size  # (w, h)
    bucket: Size  # (w, h) the image is cropped to
    # (w, h) to resize to before the center crop (kohya's resized_size); None: just cover the bucket.
    resized_size: Size | None = None


def scan_records(blueprints: list[DatasetBlueprint]) -> list[ImageRecord]:
    """Records for every image of every subset; raises one ``DatasetError`` listing all problems."""
    problems: list[str] = []
    records: list[ImageRecord] = []
    for index, blueprint in enumerate(blueprints):
        manager = BucketManager.from_blueprint(blueprint)
        found = [r for subset in blueprint.subsets for r in _scan_subset(subset, index, manager, problems)]
        if found and all(record.subset.is_reg for record in found):
            problems.append(f"datasets[{index}]: only regularization images (is_reg); add a training subset")
        records += found
    if not records and not problems:
        folders = ", ".join(str(s.source) for bp in blueprints for s in bp.subsets) or "(no subsets)"
        problems.append(f"the dataset is empty: no images found in {folders}")
    if problems:
        raise DatasetError(problems)
    return records


def _scan_subset(subset: Subset, index: int, manager: BucketManager, problems: list[str]) -> list[ImageRecord]:
    entries = metadata_entries(subset, problems) if subset.metadata_file else _folder_entries(subset, problems)
    records = []
    for (path, caption), probed in zip(entries, _probe_all([path for path, _ in entries]), strict=True):
        if isinstance(caption, CaptionProblem):
            problems.append(f"{path}: {caption}")
        if isinstance(probed, ImageProblem):
            problems.append(f"{path}: {probed}")
            continue
        bucket, resized = manager.select(probed)
        if min(bucket) <= 0:
            problems.append(
                f"{path}: {probed[0]}x{probed[1]} is smaller than bucket_reso_steps {manager.steps}; "
                "with bucket_no_upscale it cannot fill a bucket"
            )
            continue
        if not isinstance(caption, CaptionProblem):
            records.append(ImageRecord(path, caption, subset, index, probed, bucket, resized))
    return records


def _folder_entries(subset: Subset, problems: list[str]) -> list[tuple[Path, str | CaptionProblem]]:
    """kohya DreamBooth subset: every image in image_dir, with its caption file or class tokens."""
    folder = subset.image_dir
    try:
        paths = list_images(folder)
    except OSError as error:
        problems.append(f"{folder}: cannot list image folder ({error.strerror or error})")
        return []
    if not paths:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        problems.append(f"{folder}: empty subset folder, no images ({extensions})")
    entries: list[tuple[Path, str | CaptionProblem]] = []
    for path in paths:
        try:
            entries.append((path, read_caption(path, subset)))
        except CaptionProblem as problem:
            entries.append((path, problem))
    return entries


def _probe_all(paths: list[Path]) -> list[Size | ImageProblem]:
    """Decode images on a few threads (PIL releases the GIL while decoding); order kept."""

    def probe(path: Path) -> Size | ImageProblem:
        try:
            return probe_image(path)
        except ImageProblem as problem:
            return problem
        except OSError as error:  # stat() on a file removed mid-scan
            return ImageProblem(f"cannot read file ({error.strerror or error})")

    if len(paths) < 4:
        return [probe(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(probe, paths))


def count_images_per_subset(records: list[ImageRecord]) -> dict[Path, int]:
    """Distinct images per subset folder or metadata file (before repeats)."""
    return dict(Counter(record.subset.source for record in records))


def count_samples_with_repeats(records: list[ImageRecord]) -> int:
    """Samples per epoch: kohya's "num train images * repeats" plus the balanced reg images."""
    return sum(sample_counts(records))


def dataset_dirs_metadata(records: list[ImageRecord]) -> dict[str, dict[str, int]]:
    """kohya's ss_dataset_dirs: {folder (or metadata file) name: {"n_repeats", "img_count"}}."""
    dirs: dict[str, dict[str, int]] = {}
    for record in records:
        entry = dirs.setdefault(record.subset.source.name, {"n_repeats": record.subset.num_repeats, "img_count": 0})
        entry["img_count"] += 1
    return dirs


def tag_frequency(records: list[ImageRecord]) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per folder, how many captions carry each tag (A1111 shows it)."""
    frequency: dict[str, Counter] = {}
    for record in records:
        tags = {t.strip() for t in record.caption.split(record.subset.caption_separator) if t.strip()}
        frequency.setdefault(record.subset.source.name, Counter()).update(tags)
    return {folder: dict(counts.most_common()) for folder, counts in frequency.items()}
