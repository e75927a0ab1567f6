"""``python -m evaluate``'s pre-flight: the files, prompts, reference images and model path, before any model loads.

The entry point runs ``check_comparison`` before it imports the comparison
(diffusers and the pipelines: tens of seconds on 2 cores), so a missing file,
an unreadable network file or a bad prompt line is reported in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evaluate.model_files import check_evaluation_files
from evaluate.objective import check_objective
from evaluate.prompts import load_prompts
from evaluate.score_config import ScoreConfig
from train import data
from train.atomic import check_writable_dir
from train.data.split import split_validation
from train.errors import ConfigError

if TYPE_CHECKING:
    from train.networks.from_file import NetworkFile

# A folder stands for its network files: kohya/LyCORIS .safetensors and A1111 hypernetwork .pt.
FILE_PATTERNS = ("*.safetensors", "*.pt")


@dataclass
class CheckedComparison:
    files: list[Path]
    networks: dict[Path, NetworkFile]
    prompts: list
    references: list[Path]  # training images for clip_i; held-out ones excluded


def expand_files(entries: list[str]) -> list[Path]:
    """Files as given; a folder stands for its *.safetensors and *.pt, sorted. Missing paths -> one ConfigError."""
    files, missing = [], []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            files += sorted(found for pattern in FILE_PATTERNS for found in path.glob(pattern))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(entry)
    if missing:
        raise ConfigError(f"files: not found: {', '.join(missing)}")
    if not files:
        raise ConfigError(f"files: no .safetensors or .pt files in {', '.join(entries)}")
    return files



def inspect_files(files: list[Path]) -> dict[Path, NetworkFile]:
    """Each file's family and network config; every unusable file named in one ConfigError."""
    from train.networks.from_file import inspect_network_file  # torch, and diffusers for hypernetworks

    found, problems = {}, []
    for path in files:
        try:
            found[path] = inspect_network_file(path, key="files")
        except ConfigError as error:
            problems.append(str(error).removeprefix("files: "))
    if problems:
        raise ConfigError("files: " + "; ".join(problems))
    return found



def check_comparison(cfg: ScoreConfig) -> CheckedComparison:
    """Every input of a comparison, cheapest first; one ConfigError naming the key or file."""
    check_writable_dir(cfg.paths.cache_dir, "paths.cache_dir (LORA_SWEEP_CACHE)")
    files = expand_files(list(cfg.files))
    prompts = load_prompts(cfg.evaluate)
    references = []
    if cfg.dataset.train_data_dir or cfg.dataset.dataset_config:
        # The same training images the run compared against: held-out ones excluded.
        records = data.load_dataset(cfg.dataset)[1]
        train, _ = split_validation(records, cfg.dataset.validation_split, cfg.dataset.validation_seed)
        references = [r.path for r in train]
    available = cfg.evaluate.available_metrics(has_validation_images=False)
    if not references:
        available.discard("clip_i")
    check_objective(cfg.evaluate.objective, available)
    check_evaluation_files(cfg.evaluate)
    networks = inspect_files(files)  # bad files fail here, named, before the model loads
    from train.models.checks import ensure_model_available

    ensure_model_available(cfg.model)
    return CheckedComparison(files=files, networks=networks, prompts=prompts, references=references)
