"""Typed configs for evaluation and logging, checked when the config loads.

``EvaluateConfig`` mirrors conf/evaluate/, ``LoggerConfig`` mirrors conf/logger/.
They live beside the code they configure; train/config.py composes them into
the run schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from train.errors import ConfigError

DIRECTIONS = ("maximize", "minimize")
METRICS = ("clip_t", "clip_i", "aesthetic", "val_loss")
# The world's judge (evaluate/judge.py): logged beside the scores, never an objective, so it can check them.
JUDGE_METRICS = ("judge_fidelity", "judge_editability")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def nearest_multiples_of_8(value: int) -> str:
    """The valid sizes either side of ``value``, for a message (the VAE downsamples by 8)."""
    below, above = max(8, value - value % 8), value - value % 8 + 8
    return f"{below} or {above}" if below != above else str(above)


@dataclass
class ObjectiveConfig:
    # One metric with weight 1.0, or a weighted sum, e.g. {clip_t: 1.0, aesthetic: 0.1}.
    metrics: dict[str, float] = field(default_factory=lambda: {"clip_t": 1.0})
    direction: str = "maximize"

    def __post_init__(self) -> None:
        _require(
            any(w != 0 for w in self.metrics.values()), "evaluate.objective.metrics", "give a metric a nonzero weight"
        )
        for name in self.metrics:
            _require(
                name not in JUDGE_METRICS,
                f"evaluate.objective.metrics.{name}",
                "the judge is the world's ground truth, kept out of the objective so that it can check it; "
                f"choose from {METRICS}",
            )
            _require(name in METRICS, f"evaluate.objective.metrics.{name}", f"unknown metric; choose from {METRICS}")
        _require(
            self.direction in DIRECTIONS,
            "evaluate.objective.direction",
            f"must be one of {DIRECTIONS}, got {self.direction!r}",
        )


@dataclass
class ValidationConfig:
    # Deterministic validation loss on held-out images (dataset.validation_split).
    enabled: bool = True
    timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])
    seed: int = 0


@dataclass
class EvaluateConfig:
    name: str = "none"
    enabled: bool = False
    # Whichever is set; evaluation also runs at the end of training.
    every_n_steps: int | None = None
    every_n_epochs: int | None = None
    # Prompts: a list of strings (kohya options allowed inline: "a cat --n blurry --d 5"),
    # or a kohya sample-prompt file (.txt, .toml, .json); the file wins when set.
    prompts: list[str] = field(default_factory=list)
    prompt_file: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    # What a prompt's own --ss/--s/--l/--n leave unset; the defaults are kohya's
    # (--sample_sampler ddim; sample_image_inference: 30 steps, scale 7.5).
    sampler: str = "ddim"
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    # null: the dataset's resolution (kohya renders 512x512 whatever the training size).
    width: int | None = None
    height: int | None = None
    batch_size: int = 4
    # true: every image is pixel-identical at any batch size (each image's U-Net rows run on
    # their own; batching shares text encoding and overhead). false: whole batches through
    # the U-Net, several times faster, images may differ by 1/255 between batch sizes.
    batch_invariant: bool = True
    # Also render with the LoRA off, and at these LoRA strengths.
    baseline: bool = False
    multipliers: list[float] = field(default_factory=lambda: [1.0])
    # A local CLIP folder (CLIPModel + processor); null with build_demo_clip builds a tiny one.
    clip_path: str | None = None
    # LAION aesthetic head weights (.pth state dict or .safetensors); null: no aesthetic score
    # unless build_demo_clip provides a demo head.
    aesthetic_path: str | None = None
    build_demo_clip: bool = False
    demo_clip_dir: str = "${paths.cache_dir}/models/tiny-clip"
    # The world's judge folder (evaluate/judge.py): judge_fidelity and judge_editability on the prompts
    # that name the world's concept token; null: no judge (it only knows the world's images).
    judge_path: str | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        for key in ("every_n_steps", "every_n_epochs", "width", "height"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"evaluate.{key}", f"must be >= 1 or null, got {value}")
        for key in ("width", "height"):
            value = getattr(self, key)
            if value is not None and value % 8:
                _require(False, f"evaluate.{key}", f"{value} is not a multiple of 8 (the VAE works in 8-pixel blocks); use {nearest_multiples_of_8(value)}")
        _require(bool(self.seeds), "evaluate.seeds", "give at least one seed")
        _require(self.num_inference_steps >= 1, "evaluate.num_inference_steps", "must be >= 1")
        _require(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        _require(bool(self.multipliers), "evaluate.multipliers", "give at least one LoRA strength")
        _require(
            not self.enabled or bool(self.prompts) or self.prompt_file is not None,
            "evaluate.prompts",
            "evaluation is enabled but there are no prompts (set evaluate.prompts or evaluate.prompt_file)",
        )

    def available_metrics(self, has_validation_images: bool) -> set[str]:
        """What this evaluation will produce, known before any model loads."""
        metrics = set()
        if self.clip_path or self.build_demo_clip:
            metrics |= {"clip_t", "clip_i"}
        if self.aesthetic_path or (self.build_demo_clip and not self.clip_path):
            metrics.add("aesthetic")
        if self.validation.enabled and has_validation_images:
            metrics.add("val_loss")
        if self.judge_path:
            metrics |= set(JUDGE_METRICS)
        return metrics


@dataclass
class LoggerConfig:
    name: str = "both"
    # Backends by name, each built from its `_target_` (see conf/logger/).
    backends: dict[str, Any] = field(default_factory=dict)
    # Runs of one sweep share a group (the study name) in W&B.
    group: str | None = None
