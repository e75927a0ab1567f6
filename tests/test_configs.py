"""Every shipped config composes, type-checks and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import CONF_DIR, compose_run
from train import optimizers, schedulers
from train.errors import ConfigError
from train.networks import Network, build_network
from train.noise import build_noise_sampler

# Presets that need a user's path get a placeholder: composing must still work.
REQUIRED = {
    ("model", "sd15"): ["model.path=/models/sd15"],
    ("model", "sd15_single_file"): ["model.path=/models/sd15.safetensors", "model.config_dir=/models/sd15"],
    ("model", "sd2_v"): ["model.path=/models/sd2"],
    ("model", "sdxl"): ["model.path=/models/sdxl"],
    ("dataset", "folder"): ["dataset.train_data_dir=/data/train"],
    ("dataset", "kohya_toml"): ["dataset.dataset_config=/data/dataset.toml"],
    ("evaluate", "clip"): ["evaluate.prompt_file=/data/prompts.txt", "evaluate.clip_path=/models/clip"],
}
OPTIONS = sorted((group.name, f.stem) for group in CONF_DIR.iterdir() if group.is_dir() for f in group.glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_shipped_option_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    cfg = compose_run(overrides, tmp_path / "out", tmp_path / "cache")
    param = torch.nn.Parameter(torch.zeros(4, 4))
    opt = optimizers.build_optimizer(cfg.optimizer, [{"params": [param], "lr": cfg.optimizer.learning_rate}])
    schedulers.build_scheduler(cfg.scheduler, opt, num_training_steps=100)
    noise = build_noise_sampler(cfg.noise)
    assert noise(torch.zeros(1, 4, 8, 8), torch.Generator().manual_seed(0)).shape == (1, 4, 8, 8)
    assert isinstance(build_network(cfg.network), Network)


def test_groups_mirror_the_modules_they_configure():
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert {"model", "dataset", "network", "optimizer", "scheduler", "noise"} <= groups


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("network.alpha=-1", "network.alpha"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("train.latent_sampling=sometimes", "train.latent_sampling"),
        ("dataset.caption_dropout_rate=1.5", "dataset.caption_dropout_rate"),
        ("dataset.caption_extension=txt", "dataset.caption_extension"),
        ("train.max_train_steps=null", "train.max_train_steps"),
        ("model.prediction_type=sample", "model.prediction_type"),
    ],
)
def test_impossible_values_fail_at_load_naming_the_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_run([override], tmp_path / "out", tmp_path / "cache")


def test_missing_mandatory_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path: must be set"):
        compose_run(["model=sd15"], tmp_path / "out", tmp_path / "cache")


def test_the_default_run_is_the_world_and_the_tests_fast_stack_the_tiny_model(tmp_path):
    cfg = compose_run([], tmp_path / "out", tmp_path / "cache", fast=False)
    assert (cfg.model.name, cfg.dataset.name, cfg.evaluate.name) == ("world", "world", "world")
    assert cfg.dataset.world.enabled and cfg.evaluate.judge_path and not cfg.model.build_tiny
    assert cfg.train.device == "auto"
    fast = compose_run([], tmp_path / "out", tmp_path / "cache")
    assert fast.model.build_tiny and Path(fast.model.path).parent == tmp_path / "cache" / "models"
    assert fast.dataset.synthetic.enabled


def test_the_world_concepts_cache_is_keyed_by_its_settings(tmp_path):
    """A sweep or a run over the concept's own settings writes each dataset once, beside the others, instead of
    finding the default's folder and stopping (a folder written with other settings is an error)."""
    def data_dir(*overrides):
        return compose_run(list(overrides), tmp_path / "out", tmp_path / "cache", fast=False).dataset.train_data_dir

    default = data_dir()
    assert Path(default).parent == tmp_path / "cache" / "data"
    others = {data_dir("dataset.world.seed=1"), data_dir("dataset.world.num_images=8"), data_dir("dataset.world.repeats=2")}
    assert len(others | {default}) == 4 and data_dir() == default


@pytest.mark.parametrize(
    ("overrides", "learning_rate", "specialised"),
    [
        ([], 3e-3, True),  # tuned/world_adamw_lora.yaml
        (["optimizer=prodigy"], 1.0, False),  # no world_prodigy_lora: the group's own
        (["model=tiny", "dataset=synthetic", "evaluate=demo"], 1e-4, False),  # no tiny_adamw_lora
        (["optimizer.learning_rate=3e-4"], 3e-4, True),  # the command line wins over the specialization
        (["network=dora"], 1e-4, False),  # no world_adamw_dora
        (["~tuned"], 1e-4, False),
    ],
)
def test_a_tuned_specialization_applies_only_to_its_model_optimizer_and_network(
    overrides, learning_rate, specialised, tmp_path
):
    cfg = compose_run(overrides, tmp_path / "out", tmp_path / "cache", fast=False)
    assert cfg.optimizer.learning_rate == pytest.approx(learning_rate)
    assert (cfg.network.conv_dim == 8, cfg.network.train_text_encoder) == (specialised, specialised)
    assert cfg.train.max_train_steps == (1000 if specialised else 200)


def test_a_sweep_preset_wins_over_the_specialization(tmp_path):
    cfg = compose_run(["sweep=demo"], tmp_path / "out", tmp_path / "cache", fast=False)
    assert cfg.train.max_train_steps == 200 and cfg.evaluate.every_n_steps == 100
    assert cfg.network.conv_dim == 8  # what the preset does not set stays the specialization's
