"""The Hydra side of the sweeper: command-line arguments and the typed hydra.sweeper config."""

from __future__ import annotations

import pytest

from sweeper.hydra_sweeper import split_arguments, sweeper_config
from train.errors import ConfigError


def test_sweep_syntax_joins_the_space_and_hydra_keys_stay_out_of_trials():
    base, swept = split_arguments(
        ["sweep=demo", "hydra.sweeper.storage=postgresql://u:secret@h/db", "network.dim=choice(4,8)", "train.seed=3"]
    )
    assert base == ["sweep=demo", "train.seed=3"]
    assert swept == {"network.dim": "choice(4,8)"}


def test_sweeper_config_is_checked_naming_the_key():
    cfg = sweeper_config({"n_trials": 3, "sampler": {"_target_": "optuna.samplers.RandomSampler"}})
    assert cfg.n_trials == 3 and cfg.sampler["_target_"] == "optuna.samplers.RandomSampler"
    with pytest.raises(ConfigError, match="hydra.sweeper.n_trials"):
        sweeper_config({"n_trials": 0})
    with pytest.raises(ConfigError, match="hydra.sweeper.direction"):
        sweeper_config({"direction": "up"})
