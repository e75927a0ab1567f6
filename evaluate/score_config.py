"""Schema of ``python -m evaluate``: the training groups it reuses plus the files to score."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from evaluate.config import EvaluateConfig, LoggerConfig
from train.config import DatasetConfig, ModelConfig, PathsConfig
from train.errors import ConfigError


@dataclass
class ScoreConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # The training images CLIP-I compares against (optional: without it, no CLIP-I).
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # LoRA files, or folders whose *.safetensors are all scored (epochs of a run, trials of a sweep).
    files: list[str] = MISSING
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError(
                "files: give one or more LoRA files or folders, e.g. 'files=[a.safetensors,b.safetensors]'"
            )
        if not self.evaluate.enabled:
            raise ConfigError("evaluate.enabled: scoring files needs an evaluation config (e.g. evaluate=demo)")


def register_score_config() -> None:
    ConfigStore.instance().store(name="score_schema", node=ScoreConfig)
