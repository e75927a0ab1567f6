"""Typed configs for the trainer, registered in Hydra's ConfigStore.

Each dataclass mirrors one config group in ``conf/`` and checks its values in
``__post_init__``, so a bad value fails when Hydra composes the config, before
any model is loaded. Objects with many implementations (optimizer, scheduler,
noise) carry a ``_target_`` and are built with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from evaluate.config import EvaluateConfig, LoggerConfig, nearest_multiples_of_8
from train.errors import ConfigError

MIXED_PRECISION = ("no", "fp16", "bf16")
LATENT_SAMPLING = ("once", "deterministic", "random")
PREDICTION_TYPES = ("epsilon", "v_prediction")
# "sd": SD 1.x/2.x (one CLIP text encoder); "sdxl": two text encoders, pooled embeddings, size conditioning.
ARCHITECTURES = ("sd", "sdxl")
# The world's pretrained models ship inside the package (`make world` rebuilds them there).
WORLD_DIR = str(Path(__file__).resolve().parent / "models" / "assets")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass
class PathsConfig:
    # Built models, latent and text-embedding caches live here, shared by runs.
    cache_dir: str = ".cache/lora_sweep"
    output_dir: str = "${hydra:runtime.output_dir}"
    # The world's base model, CLIP, aesthetic head and judge (model=world, evaluate=world).
    world_dir: str = WORLD_DIR


@dataclass
class ModelConfig:
    name: str = "tiny"
    # A diffusers folder, or a single .safetensors/.ckpt checkpoint.
    path: str = MISSING
    # For a single-file checkpoint: a local diffusers-layout folder with the configs.
    config_dir: str | None = None
    # Build the tiny demo model at `path` when it does not exist yet.
    build_tiny: bool = False
    # Override the scheduler's prediction type (null: read it from the model).
    prediction_type: str | None = None
    # Pickle checkpoints (.ckpt/.pt) load with weights_only=True unless this is set.
    allow_unsafe_pickle: bool = False
    # sd | sdxl; null: read it from the model (a diffusers folder with text_encoder_2 is SDXL).
    architecture: str | None = None

    def __post_init__(self) -> None:
        _require(
            self.architecture is None or self.architecture in ARCHITECTURES,
            "model.architecture",
            f"must be one of {ARCHITECTURES} or null, got {self.architecture!r}",
        )
        _require(
            self.prediction_type is None or self.prediction_type in PREDICTION_TYPES,
            "model.prediction_type",
            f"must be one of {PREDICTION_TYPES} or null, got {self.prediction_type!r}",
        )


@dataclass
class SyntheticDataConfig:
    # Generate a demo dataset at dataset.train_data_dir when it does not exist.
    enabled: bool = False
    num_images: int = 8
    seed: int = 0
    # Base side in pixels; some images are made wider or taller to exercise buckets.
    size: int = 64


@dataclass
class WorldDataConfig:
    # Write the world's held-out concept (train/data/world.py) at dataset.train_data_dir when missing.
    enabled: bool = False
    num_images: int = 16
    seed: int = 0
    # kohya repeats of the concept's folder (N in N_sks).
    repeats: int = 1

    def __post_init__(self) -> None:
        _require(self.num_images >= 1, "dataset.world.num_images", f"must be >= 1, got {self.num_images}")
        _require(self.repeats >= 1, "dataset.world.repeats", f"must be >= 1, got {self.repeats}")


@dataclass
class DatasetConfig:
    name: str = "synthetic"
    # kohya layout: a parent folder whose `N_name` subfolders repeat N times.
    train_data_dir: str | None = None
    # A kohya dataset_config TOML; when set it is read as is, train_data_dir ignored.
    dataset_config: str | None = None
    # Prior preservation: class images in the same N_name layout, trained as is_reg subsets
    # (weighted by train.prior_loss_weight). Ignored when dataset_config is set (use is_reg there).
    reg_data_dir: str | None = None
    # null: kohya's default for the source, `.caption` for a dataset_config TOML, `.txt` for a folder.
    caption_extension: str | None = None
    # Used as caption for images without a caption file (kohya DreamBooth style).
    class_tokens: str | None = None
    resolution: list[int] = field(default_factory=lambda: [512, 512])
    batch_size: int = 1
    # null: kohya's default for the source, off for a dataset_config TOML, on for a folder.
    enable_bucket: bool | None = None
    bucket_reso_steps: int = 64
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_no_upscale: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_separator: str = ","
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    # Drop every caption on epochs n, 2n, ... (kohya); 0 = never.
    caption_dropout_every_n_epochs: int = 0
    # flip_aug works with cached latents (both flips are cached); color_aug and random_crop
    # change the pixels every step, so they need train.cache_latents=false.
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    # kohya's validation_split: this fraction of each dataset's images is held out of
    # training for the validation loss, chosen by validation_seed.
    validation_split: float = 0.0
    validation_seed: int = 0
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    world: WorldDataConfig = field(default_factory=WorldDataConfig)

    def __post_init__(self) -> None:
        _require(len(self.resolution) in (1, 2), "dataset.resolution", "give [size] or [width, height]")
        _require(all(r > 0 for r in self.resolution), "dataset.resolution", "must be positive")
        for size in (r for r in self.resolution if r % 8):
            _require(False, "dataset.resolution", f"{size} is not a multiple of 8 (the VAE works in 8-pixel blocks); use {nearest_multiples_of_8(size)}")
        _require(self.batch_size >= 1, "dataset.batch_size", "must be >= 1")
        _require(self.bucket_reso_steps >= 8, "dataset.bucket_reso_steps", "must be >= 8")
        _require(
            self.min_bucket_reso <= self.max_bucket_reso,
            "dataset.min_bucket_reso",
            "must not exceed dataset.max_bucket_reso",
        )
        _require(self.keep_tokens >= 0, "dataset.keep_tokens", "must be >= 0")
        _require(self.caption_dropout_every_n_epochs >= 0, "dataset.caption_dropout_every_n_epochs", "must be >= 0")
        _require(0.0 <= self.validation_split < 1.0, "dataset.validation_split", "must be in [0, 1)")
        for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            value = getattr(self, key)
            _require(0.0 <= value <= 1.0, f"dataset.{key}", f"must be in [0, 1], got {value}")
        _require(
            self.caption_extension is None or self.caption_extension.startswith("."),
            "dataset.caption_extension",
            f"must start with '.', got {self.caption_extension!r}",
        )


def _optional_rate(key: str, value: float | None) -> None:
    _require(value is None or 0.0 <= value < 1.0, key, f"must be in [0, 1) or null, got {value}")


@dataclass
class NetworkConfig:
    name: str = "lora"
    dim: int = 4
    # kohya's meaning: scale = alpha / dim; 0 means alpha = dim (scale 1).
    alpha: float = 1.0
    # LoCon (and LoHa/LoKr): also adapt conv layers when conv_dim is set.
    conv_dim: int | None = None
    conv_alpha: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = False
    unet_target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
    )
    text_encoder_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    )
    # kohya-style init: A kaiming-uniform, B zeros (the network starts as a no-op).
    init_lora_weights: str = "kaiming"
    # Regularizers, active only in training (null = off). kohya's meanings for LoRA:
    # network_dropout drops the down projection's outputs, rank_dropout whole ranks,
    # module_dropout skips a whole module for a step.
    network_dropout: float | None = None
    rank_dropout: float | None = None
    module_dropout: float | None = None
    # Max-norm: after each step, scale any module whose update norm exceeds this (kohya ~1.0).
    scale_weight_norms: float | None = None
    # The family (train/networks/): `_target_` plus that family's own options.
    module: Any = field(default_factory=lambda: {"_target_": "train.networks.lora.LoRA"})

    def __post_init__(self) -> None:
        _require(self.dim >= 1, "network.dim", f"must be >= 1, got {self.dim}")
        _require(self.alpha >= 0, "network.alpha", f"must be >= 0 (0 means alpha = dim), got {self.alpha}")
        _require(self.conv_dim is None or self.conv_dim >= 1, "network.conv_dim", "must be >= 1 or null")
        _require(self.conv_alpha is None or self.conv_alpha >= 0, "network.conv_alpha", "must be >= 0 or null")
        _require(
            self.train_unet or self.train_text_encoder,
            "network.train_unet",
            "nothing to train: enable train_unet or train_text_encoder",
        )
        for key in ("network_dropout", "rank_dropout", "module_dropout"):
            _optional_rate(f"network.{key}", getattr(self, key))
        _require(
            self.scale_weight_norms is None or self.scale_weight_norms > 0,
            "network.scale_weight_norms",
            f"must be > 0 or null, got {self.scale_weight_norms}",
        )

    @property
    def effective_alpha(self) -> float:
        return float(self.dim) if self.alpha == 0 else float(self.alpha)

    @property
    def effective_conv_alpha(self) -> float | None:
        if self.conv_dim is None:
            return None
        alpha = self.alpha if self.conv_alpha is None else self.conv_alpha
        return float(self.conv_dim) if alpha == 0 else float(alpha)


@dataclass
class OptimizerConfig:
    name: str = "AdamW"
    learning_rate: float = 1e-4
    # null: fall back to learning_rate.
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    # `_target_` + `_partial_: true`; called with the parameter groups.
    factory: Any = field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "_partial_": True})

    def __post_init__(self) -> None:
        for key in ("learning_rate", "unet_lr", "text_encoder_lr"):
            value = getattr(self, key)
            _require(value is None or math.isfinite(value), f"optimizer.{key}", f"must be a finite number, got {value}")
            _require(value is None or value >= 0, f"optimizer.{key}", f"must be >= 0, got {value}")
        _require(
            self.learning_rate > 0 or not self.uses_learning_rate,
            "optimizer.learning_rate",
            f"is 0: {self.name} would never change a weight; give a positive rate "
            "(1.0 for the optimizers that adapt it, Prodigy and D-Adaptation)",
        )

    @property
    def uses_learning_rate(self) -> bool:
        """False only for Adafactor's relative_step, which computes its own step size."""
        factory = self.factory if isinstance(self.factory, dict) else {}
        return not factory.get("relative_step", False)


@dataclass
class SchedulerConfig:
    name: str = "constant"
    # `_target_` + `_partial_: true`; called with (optimizer, num_training_steps).
    factory: Any = field(default_factory=lambda: {"_target_": "train.schedulers.constant", "_partial_": True})


@dataclass
class NoiseConfig:
    name: str = "none"
    # `_target_` of the noise sampler (see train/noise.py).
    sampler: Any = field(default_factory=lambda: {"_target_": "train.noise.NoiseSampler"})


@dataclass
class TrainConfig:
    seed: int = 42
    # Whichever limit comes first ends training; at least one must be set.
    max_train_steps: int | None = 60
    max_train_epochs: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    max_grad_norm: float = 1.0
    min_snr_gamma: float | None = None
    # Loss weight of regularization (is_reg / reg_data_dir) images, kohya's prior_loss_weight.
    prior_loss_weight: float = 1.0
    save_every_n_steps: int | None = None
    save_every_n_epochs: int | None = None
    output_name: str = "lora"
    # Resume from a saved LoRA file (kohya format).
    network_weights: str | None = None
    cache_latents: bool = True
    latent_sampling: str = "once"
    # null: cache them when every caption is the same at each step (no shuffle, dropout, warm-up or
    # wildcard choice), else encode each step; true: cache, and refuse per-step captions; false: never.
    cache_text_encoder_outputs: bool | None = None
    # "auto" picks cuda when available, else cpu.
    device: str = "auto"
    log_every_n_steps: int = 1

    def __post_init__(self) -> None:
        _require(
            self.max_train_steps is not None or self.max_train_epochs is not None,
            "train.max_train_steps",
            "set max_train_steps or max_train_epochs",
        )
        for key in ("max_train_steps", "max_train_epochs", "save_every_n_steps", "save_every_n_epochs"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"train.{key}", f"must be >= 1 or null, got {value}")
        _require(self.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps", "must be >= 1")
        _require(
            self.mixed_precision in MIXED_PRECISION,
            "train.mixed_precision",
            f"must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}",
        )
        _require(
            self.latent_sampling in LATENT_SAMPLING,
            "train.latent_sampling",
            f"must be one of {LATENT_SAMPLING}, got {self.latent_sampling!r}",
        )
        _require(
            self.min_snr_gamma is None or self.min_snr_gamma > 0,
            "train.min_snr_gamma",
            "must be > 0 or null",
        )
        _require(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 disables clipping)")
        _require(self.prior_loss_weight >= 0, "train.prior_loss_weight", f"must be >= 0, got {self.prior_loss_weight}")


@dataclass
class RunConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        if not self.optimizer.uses_learning_rate:
            return
        for module, lr_key, flag in (("U-Net", "unet_lr", "train_unet"), ("text encoder", "text_encoder_lr", "train_text_encoder")):
            _require(
                not (getattr(self.network, flag) and getattr(self.optimizer, lr_key) == 0),
                f"optimizer.{lr_key}",
                f"is 0 while network.{flag} is true: the {module} LoRA would be built and stepped but never change; "
                f"set network.{flag}=false (kohya's network_train_unet_only) or a positive rate",
            )


def register_configs() -> None:
    """Register the schemas; group files in conf/ name them in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="network", name="network_schema", node=NetworkConfig)
    cs.store(group="optimizer", name="optimizer_schema", node=OptimizerConfig)
    cs.store(group="scheduler", name="scheduler_schema", node=SchedulerConfig)
    cs.store(group="noise", name="noise_schema", node=NoiseConfig)
    cs.store(group="evaluate", name="evaluate_schema", node=EvaluateConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    # hydra/sweeper=lora (the sweeper's own groups) is registered by hydra_plugins/lora_sweeper.
