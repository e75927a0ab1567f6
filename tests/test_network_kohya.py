"""Where the network families differ from kohya / LyCORIS on purpose, and what the user is told."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.network_helpers import family_config
from train.config import NetworkConfig
from train.networks import build_network
from train.recipe import LoRATrainingRecipe

HYPERNETWORK = {"_target_": "train.networks.hypernetwork.Hypernetwork"}


def _warnings(caplog, cfg: NetworkConfig) -> list[str]:
    with caplog.at_level(logging.WARNING):
        build_network(cfg)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_lokr_with_tucker_convs_warns_once_when_the_config_is_checked(caplog):
    [message] = _warnings(caplog, family_config("lokr", module={"use_tucker": True}))
    assert message.startswith("network.module.use_tucker")
    assert "ComfyUI" in message and "A1111" in message and "network.module.use_tucker=false" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "cfg",
    [
        family_config("lokr"),
        family_config("lokr", conv_dim=None, module={"use_tucker": True}),  # no 3x3 convs: nothing is Tucker
        family_config("loha", module={"use_tucker": True}),  # ComfyUI's LoHa path applies Tucker cores
    ],
    ids=["lokr", "lokr-no-convs", "loha-tucker"],
)
def test_no_tucker_warning_where_comfyui_applies_every_module(caplog, cfg):
    assert _warnings(caplog, cfg) == []


def _differences(cfg: NetworkConfig) -> str:
    return " | ".join(d.text for d in build_network(cfg).kohya_differences())


@pytest.mark.parametrize(
    "cfg, present, absent",
    [
        (NetworkConfig(), ["network.train_text_encoder=true"], ["network.conv_alpha=", "network.conv_dim="]),
        (NetworkConfig(train_text_encoder=True), [], ["train_text_encoder", "network.conv_alpha="]),
        (
            NetworkConfig(alpha=2, conv_dim=4, train_text_encoder=True),
            ["network.alpha=2", "1.0", "network.conv_alpha=1"],
            ["train_text_encoder"],
        ),
        (NetworkConfig(conv_dim=4, conv_alpha=1, train_text_encoder=True), [], ["network.conv_alpha="]),
        (NetworkConfig(alpha=1, conv_dim=4, train_text_encoder=True), [], ["network.conv_alpha="]),  # 1.0 either way
        (family_config("lora_fa", conv_alpha=None), ["network.conv_alpha=1"], []),
        # LyCORIS: conv_alpha defaults to network_alpha, as ours; conv_dim to network_dim (ours: no convs).
        (family_config("loha", conv_alpha=None), [], ["network.conv_alpha=", "network.conv_dim="]),
        (family_config("loha", conv_dim=None), ["network.conv_dim=4"], ["network.conv_alpha="]),
        (family_config("dora", conv_dim=None), ["network.conv_dim=4", "wd_on_output=False"], ["network.conv_alpha="]),
        (NetworkConfig(name="hypernetwork", module=HYPERNETWORK), [], ["train_text_encoder", "conv"]),
    ],
    ids=[
        "lora",
        "lora-te",
        "locon-no-conv-alpha",
        "locon",
        "locon-alpha-1",
        "lora-fa",
        "loha",
        "loha-no-convs",
        "dora",
        "hyper",
    ],
)
def test_each_difference_says_what_to_set_for_kohyas_behaviour(cfg, present, absent):
    text = _differences(cfg)
    assert all(p in text for p in present), text
    assert not any(a in text for a in absent), text


def test_one_line_at_run_start_none_in_the_preflight_alone(make_run, caplog):
    """A sweep's trial checks run the pre-flight many times; the line belongs to the run itself."""
    overrides = ["network=locon", "network.alpha=2", "network.conv_alpha=null", "train.max_train_steps=1"]
    cfg = make_run(*overrides, "evaluate=none")
    with caplog.at_level(logging.INFO):
        LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir)).preflight()
        assert not [r for r in caplog.records if "kohya" in r.getMessage()]
        LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir)).setup()
    [line] = [r for r in caplog.records if "kohya" in r.getMessage()]
    assert line.levelno == logging.WARNING  # same flags, another conv scale than kohya's
    message = line.getMessage()
    assert "network.conv_alpha=1" in message and "network.train_text_encoder=true" in message
    assert "\n" not in message
