"""A run's pre-flight: every input a user can get wrong, checked before any model library loads.

``python -m train`` runs ``check_run`` right after the config is typed, before
it imports the recipe (diffusers, transformers, accelerate: tens of seconds on
2 cores), so a bad path, dataset, prompt file or option costs seconds. The
order goes from cheap to dear: writable paths and logger settings, then the
dataset and prompts (no torch), then the options that build small torch
objects (optimizer, schedule, noise, network, a network file's header), and
last the base model's path. The recipe keeps what was built here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evaluate.loggers import MultiLogger, build_logger
from evaluate.model_files import check_evaluation_files
from evaluate.objective import check_objective
from evaluate.prompts import load_prompts
from train import data
from train.atomic import check_writable_dir
from train.config import RunConfig
from train.data.split import split_validation
from train.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from train.data import DatasetBlueprint, ImageRecord
    from train.networks import Network


@dataclass
class CheckedRun:
    """What the pre-flight read and built; the recipe trains from it."""

    blueprints: list[DatasetBlueprint]
    records: list[ImageRecord]
    val_records: list[ImageRecord]
    use_text_cache: bool
    prompts: list
    logger: MultiLogger
    device: torch.device
    noise_sampler: Any
    network: Network


def pick_device(wanted: str) -> torch.device:
    import torch

    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {wanted} asked for, but no CUDA device is visible")
    return torch.device(wanted)


def check_run(cfg: RunConfig) -> CheckedRun:
    """Check every user input of a training run, cheapest first, without loading a model."""
    check_writable_dir(cfg.paths.cache_dir, "paths.cache_dir (LORA_SWEEP_CACHE)")
    logger = build_logger(cfg.logger)
    blueprints, all_records = data.load_dataset(cfg.dataset)
    records, val_records = split_validation(all_records, cfg.dataset.validation_split, cfg.dataset.validation_seed)
    problems = data.cache_problems(records, cfg.train.cache_latents)
    if problems:
        raise ConfigError("train.cache_latents: " + "; ".join(problems))
    use_text_cache = data.use_text_cache(records, cfg.train.cache_text_encoder_outputs, cfg.network.train_text_encoder)
    prompts = []
    if cfg.evaluate.enabled:
        prompts = load_prompts(cfg.evaluate)
        check_objective(cfg.evaluate.objective, cfg.evaluate.available_metrics(bool(val_records)))
        check_evaluation_files(cfg.evaluate)
    # From here on the checks build small torch objects (a second or two to import torch).
    from train import optimizers, schedulers
    from train.models.checks import ensure_model_available
    from train.networks import build_network
    from train.networks.weights_check import check_network_weights
    from train.noise import build_noise_sampler

    optimizers.check_optimizer(cfg.optimizer)
    schedulers.check_scheduler(cfg.scheduler, cfg.optimizer.learning_rate)
    noise_sampler = build_noise_sampler(cfg.noise)
    network = build_network(cfg.network)
    if cfg.train.network_weights:
        check_network_weights(cfg.train.network_weights, cfg.network)
    device = pick_device(cfg.train.device)
    if cfg.train.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA device; use bf16 or no on CPU")
    ensure_model_available(cfg.model)
    return CheckedRun(
        blueprints=blueprints,
        records=records,
        val_records=val_records,
        use_text_cache=use_text_cache,
        prompts=prompts,
        logger=logger,
        device=device,
        noise_sampler=noise_sampler,
        network=network,
    )
