"""The official Optuna sweeper's custom-search-space-objective.py `configure`, on this project's keys."""

from omegaconf import DictConfig
from optuna.trial import Trial


def configure(cfg: DictConfig, trial: Trial) -> None:
    # A bound that depends on a sampled param, and one read from the sweep's config (as the plugin's example).
    dim = trial.params["network.dim"]
    trial.suggest_float("optimizer.factory.weight_decay", 0.0, dim * 0.01)
    trial.suggest_int("train.seed", cfg.train.seed, cfg.train.seed + 3)
