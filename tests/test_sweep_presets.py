"""Every shipped sweep preset parses, samples, and each sampled trial composes into a buildable run."""

from __future__ import annotations

from collections import defaultdict

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir

from sweeper.space.search_space import parse_search_space
from tests.conftest import CONF_DIR, compose_run
from train import optimizers
from train.networks import build_network
from train.noise import build_noise_sampler

PRESETS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def search_space(preset: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sweep={preset}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    return parse_search_space(sweeper.params, sweeper.get("conditional"), sweeper.get("derived"))


def sampled_trials(preset: str, count: int) -> list[dict]:
    space = search_space(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = []
    for _ in range(count):
        trial = study.ask()
        values = space.sample(trial)
        study.tell(trial, 0.0)
        trials.append(values | {"_overrides": space.overrides(values)})
    return trials


@pytest.mark.parametrize("preset", PRESETS)
def test_each_sampled_trial_composes_and_builds(preset, tmp_path):
    for index, values in enumerate(sampled_trials(preset, 6)):
        cfg = compose_run([f"sweep={preset}", *values["_overrides"]], tmp_path / f"{index}", tmp_path / "cache")
        build_network(cfg.network)
        build_noise_sampler(cfg.noise)
        param = torch.nn.Parameter(torch.zeros(2))
        optimizers.build_optimizer(cfg.optimizer, [{"params": [param], "lr": cfg.optimizer.learning_rate}])


def test_the_network_preset_searches_each_family_with_its_own_parameters(tmp_path):
    by_family = defaultdict(list)
    for values in sampled_trials("network", 80):
        by_family[values["network"]].append(values)
    assert set(by_family) == {"lora", "locon", "lora_fa", "dora", "loha", "lokr", "hypernetwork"}
    for family, trials in by_family.items():
        keys = set(trials[0]) - {"_overrides"}
        if family == "hypernetwork":
            assert {"network.module.layer_structure", "network.module.activation"} <= keys
            assert not keys & {"network.dim", "network.alpha"}
            assert all(t["optimizer.learning_rate"] <= 3e-5 for t in trials)
        else:
            assert all(t["network.alpha"] in (t["network.dim"] * 0.5, t["network.dim"] * 1.0) for t in trials)
            assert ("network.conv_dim" in keys) == (family in ("locon", "loha", "lokr"))
            assert ("network.module.factor" in keys) == (family == "lokr")
        cfg = compose_run(["sweep=network", *trials[0]["_overrides"]], tmp_path / family, tmp_path / "cache")
        assert type(build_network(cfg.network)).__module__.startswith("train.networks.")
        assert cfg.network.name == family
