"""One call for the recipe: config -> (blueprints, records), demo data made if asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.data.records import ImageRecord, scan_records
from train.data.sources import DatasetBlueprint, as_resolution, read_blueprints
from train.data.synthetic import make_synthetic_dataset
from train.data.world import make_concept_dataset


def load_dataset(cfg: Any) -> tuple[list[DatasetBlueprint], list[ImageRecord]]:
    """Read and check the whole dataset of a ``DatasetConfig``; one ``DatasetError`` if anything is bad.

    With ``cfg.synthetic.enabled`` (or ``cfg.world.enabled``) and no TOML, the demo dataset (or the
    world's concept) is written to ``cfg.train_data_dir`` first when that folder is missing or empty.
    """
    concept = getattr(cfg, "world", None)
    if concept is not None and concept.enabled and not cfg.dataset_config and cfg.train_data_dir:
        make_concept_dataset(Path(cfg.train_data_dir).expanduser(), concept.num_images, concept.seed, concept.repeats)
    synthetic = cfg.synthetic
    if synthetic.enabled and not cfg.dataset_config and cfg.train_data_dir:
        size = getattr(synthetic, "size", None) or min(as_resolution(cfg.resolution))
        make_synthetic_dataset(Path(cfg.train_data_dir).expanduser(), synthetic.num_images, synthetic.seed, size)
    blueprints = read_blueprints(cfg)
    return blueprints, scan_records(blueprints)
