"""Where the training images come from: a kohya folder layout or a kohya dataset TOML.

Both end as the same list of ``DatasetBlueprint``. Values in ``DatasetConfig`` are the
defaults; a TOML's ``[general]``, ``[[datasets]]`` and ``[[datasets.subsets]]`` override
them in that order, as kohya's command-line arguments are overridden by its TOML.
With the folder layout, ``reg_data_dir`` adds kohya DreamBooth regularization subsets
(``is_reg``) to the same dataset, so they share its buckets and batches.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.data.images import list_images
from train.data.kohya_toml import RawDataset, read_kohya_toml
from train.errors import DatasetError

log = logging.getLogger(__name__)

# kohya DreamBooth folder name: `10_sks dog` = 10 repeats, class tokens "sks dog".
REPEATS_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class Subset:
    """One image folder or kohya fine-tuning metadata file, kohya's ``[[datasets.subsets]]``."""

    image_dir: Path | None = None  # None only for a fine-tuning subset whose metadata keys are absolute paths
    num_repeats: int = 1
    caption_extension: str = ".txt"
    class_tokens: str | None = None
    keep_tokens: int = 0
    caption_separator: str = ","
    shuffle_caption: bool = False
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    is_reg: bool = False
    # kohya: text before this separator stays fixed when shuffling ("" = use keep_tokens).
    keep_tokens_separator: str = ""
    # kohya: drop every caption on epochs n, 2n, ... (1-based); 0 = never.
    caption_dropout_every_n_epochs: int = 0
    # kohya: change the pixels every step, so they cannot be used with cached latents.
    color_aug: bool = False
    random_crop: bool = False
    # kohya's caption options, applied in its process_caption order (train.data.captions).
    caption_prefix: str = ""
    caption_suffix: str = ""
    secondary_separator: str = ""
    enable_wildcard: bool = False
    token_warmup_min: int = 1
    token_warmup_step: float = 0  # below 1: a fraction of the run's steps
    # kohya fine-tuning subset: images and captions listed in this JSON/JSONL file.
    metadata_file: Path | None = None
    # The dataset's own validation_split/seed from a TOML; None: dataset.validation_split/seed.
    validation_split: float | None = None
    validation_seed: int | None = None

    @property
    def source(self) -> Path:
        """The file or folder that names this subset (kohya names fine-tuning subsets by their metadata file)."""
        return self.metadata_file or self.image_dir


@dataclass(frozen=True)
class DatasetBlueprint:
    """kohya's ``[[datasets]]``: shared resolution, batch size and bucketing for its subsets."""

    resolution: tuple[int, int]  # (width, height)
    batch_size: int
    enable_bucket: bool
    bucket_reso_steps: int
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_no_upscale: bool
    subsets: tuple[Subset, ...]


DATASET_FIELDS = (
    "resolution",
    "batch_size",
    "enable_bucket",
    "bucket_reso_steps",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_no_upscale",
)
VALIDATION_FIELDS = ("validation_split", "validation_seed")
SUBSET_DEFAULT_FIELDS = (
    "caption_extension",
    "class_tokens",
    "keep_tokens",
    "caption_separator",
    "shuffle_caption",
    "caption_dropout_rate",
    "caption_tag_dropout_rate",
    "flip_aug",
    "caption_dropout_every_n_epochs",
    "color_aug",
    "random_crop",
)


def as_resolution(value: Any) -> tuple[int, int]:
    """``512``, ``[512]`` or ``[768, 512]`` -> (width, height)."""
    if isinstance(value, int):
        return (value, value)
    sizes = [int(v) for v in value]
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def config_defaults(cfg: Any, kohya_toml: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dataset-level and subset-level defaults from a ``DatasetConfig`` (or its DictConfig).

    Unset (None) caption_extension and enable_bucket take kohya's defaults for the source:
    ``.caption`` and off for a dataset TOML (kohya's command-line defaults), ``.txt`` and on
    for a folder (the kohya GUI's).
    """
    dataset = {name: getattr(cfg, name) for name in DATASET_FIELDS}
    dataset["resolution"] = as_resolution(cfg.resolution)
    if dataset["enable_bucket"] is None:
        dataset["enable_bucket"] = not kohya_toml
    subset = {name: getattr(cfg, name) for name in SUBSET_DEFAULT_FIELDS}
    if subset["caption_extension"] is None:
        subset["caption_extension"] = ".caption" if kohya_toml else ".txt"
    return dataset, subset


def read_blueprints(cfg: Any) -> list[DatasetBlueprint]:
    """Blueprints from ``cfg.dataset_config`` (a kohya TOML) or else ``cfg.train_data_dir`` (+ ``reg_data_dir``)."""
    dataset_defaults, subset_defaults = config_defaults(cfg, kohya_toml=bool(cfg.dataset_config))
    if cfg.dataset_config:
        toml_path = Path(cfg.dataset_config).expanduser()
        if cfg.reg_data_dir:
            log.warning(
                "dataset.reg_data_dir is ignored because dataset.dataset_config is set; "
                "add the regularization folders to the TOML as subsets with is_reg = true"
            )
        raw_datasets = read_kohya_toml(toml_path)
        blueprints = [_from_raw(raw, dataset_defaults, subset_defaults) for raw in raw_datasets]
        source = f"dataset config {toml_path}"
    elif cfg.train_data_dir:
        root = Path(cfg.train_data_dir).expanduser()
        reg_root = Path(cfg.reg_data_dir).expanduser() if cfg.reg_data_dir else None
        blueprints = [read_folder_layout(root, dataset_defaults, subset_defaults, reg_root)]
        source = f"dataset.train_data_dir {root}"
    else:
        raise DatasetError(
            ["dataset.train_data_dir: not set; set it to a kohya image folder, or set dataset.dataset_config"],
            header="No dataset given",
        )
    problems = [p for i, bp in enumerate(blueprints) for p in blueprint_problems(bp, f"datasets[{i}]")]
    if problems:
        raise DatasetError(problems, header=f"Impossible bucket settings in {source}")
    return blueprints


def read_folder_layout(
    root: Path,
    dataset_defaults: dict[str, Any],
    subset_defaults: dict[str, Any],
    reg_root: Path | None = None,
) -> DatasetBlueprint:
    """kohya layout: each ``N_name`` subfolder repeats N times; loose images repeat once.

    ``reg_root`` subfolders become ``is_reg`` subsets of the same dataset; problems in
    both folders are reported together.
    """
    subsets, problems = _train_subsets(root, subset_defaults)
    if reg_root is not None:
        reg_subsets, reg_problems = _reg_subsets(reg_root, subset_defaults)
        subsets += reg_subsets
        problems += reg_problems
    if problems:
        header = f"dataset.train_data_dir {root}" + (f" / dataset.reg_data_dir {reg_root}" if reg_root else "")
        raise DatasetError(problems, header=f"{header} has problems")
    return DatasetBlueprint(subsets=tuple(subsets), **dataset_defaults)


def _train_subsets(root: Path, subset_defaults: dict[str, Any]) -> tuple[list[Subset], list[str]]:
    if not root.is_dir():
        raise DatasetError([f"dataset.train_data_dir: folder not found: {root}"], header="No dataset found")
    subsets: list[Subset] = []
    if list_images(root):
        subsets.append(Subset(image_dir=root, num_repeats=1, **subset_defaults))
    folder_subsets, problems = _repeat_folders(root, subset_defaults, is_reg=False, where="")
    subsets += folder_subsets
    if not subsets and not problems:
        problems.append(f"{root}: no images and no `N_name` subfolders (dataset.train_data_dir)")
    return subsets, problems


def _reg_subsets(root: Path, subset_defaults: dict[str, Any]) -> tuple[list[Subset], list[str]]:
    """kohya reads only ``N_class`` subfolders of reg_data_dir; loose images would get no class caption."""
    where = "dataset.reg_data_dir: "
    if not root.is_dir():
        return [], [f"{where}folder not found: {root}"]
    problems = []
    if list_images(root):
        problems.append(f"{where}{root}: images directly in this folder; move them into an `N_class` subfolder")
    subsets, folder_problems = _repeat_folders(root, subset_defaults, is_reg=True, where=where)
    problems += folder_problems
    if not subsets and not problems:
        problems.append(f"{where}{root}: no `N_class` subfolders (e.g. `1_dog`)")
    return subsets, problems


def _repeat_folders(
    root: Path, subset_defaults: dict[str, Any], is_reg: bool, where: str
) -> tuple[list[Subset], list[str]]:
    """Subsets for the ``N_name`` subfolders of ``root``; ``where`` prefixes each problem."""
    problems: list[str] = []
    subsets: list[Subset] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = REPEATS_FOLDER.match(folder.name)
        if match is None:
            problems.append(f"{where}{folder}: folder name must be `N_name` (N = repeats, e.g. `10_sks dog`)")
            continue
        repeats, name = int(match[1]), match[2].strip()
        if repeats < 1:
            problems.append(f"{where}{folder}: repeat count must be >= 1, got {repeats}")
            continue
        # A reg folder's name is its class caption; the training default would caption it as the instance.
        class_tokens = name or (None if is_reg else subset_defaults["class_tokens"])
        values = {**subset_defaults, "class_tokens": class_tokens, "is_reg": is_reg}
        subsets.append(Subset(image_dir=folder, num_repeats=repeats, **values))
    return subsets, problems


def _from_raw(raw: RawDataset, dataset_defaults: dict[str, Any], subset_defaults: dict[str, Any]) -> DatasetBlueprint:
    # kohya's subsets read validation_split/seed from their dataset; the split works per dataset.
    validation = {k: v for k, v in raw.values.items() if k in VALIDATION_FIELDS}
    values = {k: v for k, v in raw.values.items() if k not in VALIDATION_FIELDS}
    subsets = tuple(Subset(**{**subset_defaults, **subset, **validation}) for subset in raw.subsets)
    return DatasetBlueprint(subsets=subsets, **{**dataset_defaults, **values})


def blueprint_problems(blueprint: DatasetBlueprint, where: str) -> list[str]:
    """Settings that pass type checks but cannot make a single bucket."""
    problems = []
    width, height = blueprint.resolution
    if blueprint.min_bucket_reso > blueprint.max_bucket_reso:
        problems.append(
            f"{where}: min_bucket_reso {blueprint.min_bucket_reso} exceeds max_bucket_reso {blueprint.max_bucket_reso}"
        )
    if blueprint.enable_bucket and min(width, height) < blueprint.bucket_reso_steps:
        problems.append(
            f"{where}: resolution {width}x{height} is smaller than bucket_reso_steps {blueprint.bucket_reso_steps}"
        )
    return problems
