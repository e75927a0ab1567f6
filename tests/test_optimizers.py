"""Every shipped optimizer config builds through Hydra and trains; bad configs are ConfigErrors."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train.config import OptimizerConfig, register_configs
from train.errors import ConfigError
from train.optimizers import (
    SHIPPED_OPTIMIZERS,
    build_optimizer,
    check_optimizer,
    describe_optimizer,
    param_groups_for,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
AUTO_LR = {"prodigy", "dadapt_adam"}


def compose_optimizer(name: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=None, overrides=[f"+optimizer={name}"]).optimizer


def factory_cfg(**factory) -> OptimizerConfig:
    return OptimizerConfig(factory={"_target_": "torch.optim.AdamW", "_partial_": True, **factory})


def test_shipped_names_match_conf_files():
    assert sorted(SHIPPED_OPTIMIZERS) == sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED_OPTIMIZERS)
def test_every_optimizer_config_builds_and_steps(name):
    cfg = compose_optimizer(name)
    check_optimizer(cfg)
    torch.manual_seed(0)
    # 64x64 weights reach bitsandbytes' min_8bit_size, so the 8-bit state path runs.
    model = torch.nn.Linear(64, 64)
    inputs, targets = torch.randn(32, 64), torch.randn(32, 64)
    optimizer = build_optimizer(cfg, param_groups_for(model.parameters(), [], cfg))
    before = model.weight.detach().clone()
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight, before)
    if name not in AUTO_LR:
        assert all(later < earlier for earlier, later in pairwise(losses)), losses


def test_dataclass_config_and_param_group_lrs():
    cfg = OptimizerConfig(learning_rate=1e-3, text_encoder_lr=5e-4)
    unet, te = [torch.zeros(2, requires_grad=True)], [torch.zeros(3, requires_grad=True)]
    groups = param_groups_for(unet, te, cfg)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-3), ("text_encoder", 5e-4)]
    optimizer = build_optimizer(cfg, groups)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4]
    assert optimizer.defaults["lr"] == 1e-3
    only_te = param_groups_for([], te, OptimizerConfig(unet_lr=1e-2))
    assert [g["name"] for g in only_te] == ["text_encoder"] and only_te[0]["lr"] == 1e-4


@pytest.mark.parametrize(
    "target",
    ["torch.optim.AdamWW", "not_a_package.Optimizer", "bitsandbytes.optim.AdamW9bit", "torch.optim", "torch..x"],
)
def test_unknown_target_lists_shipped_optimizers(target):
    cfg = OptimizerConfig(factory={"_target_": target, "_partial_": True})
    for check in (check_optimizer, describe_optimizer):
        with pytest.raises(ConfigError, match=r"optimizer.factory._target_.*adamw8bit.*sgd_nesterov"):
            check(cfg)


@pytest.mark.parametrize(
    "factory, key",
    [
        ({"weight_decy": 0.01}, "optimizer.factory.weight_decy"),
        ({"lr": 1e-3}, "optimizer.factory.lr"),
        ({"betas": [1.5, 0.9]}, "optimizer.factory"),
        ({"weight_decay": "lots"}, "optimizer.factory.weight_decay"),
        ({"amsgrad": "yes"}, "optimizer.factory.amsgrad"),
    ],
)
def test_bad_options_name_the_key(factory, key):
    with pytest.raises(ConfigError, match=key):
        check_optimizer(factory_cfg(**factory))


def test_missing_dependency_of_an_installed_package_is_named(tmp_path, monkeypatch):
    (tmp_path / "half_installed_opt.py").write_text("import some_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OptimizerConfig(factory={"_target_": "half_installed_opt.Optimizer", "_partial_": True})
    with pytest.raises(ConfigError, match="some_missing_dependency"):
        check_optimizer(cfg)


def test_missing_target_is_a_config_error():
    with pytest.raises(ConfigError, match="optimizer.factory._target_"):
        check_optimizer(OmegaConf.create({"learning_rate": 1e-4, "factory": {"weight_decay": 0.1}}))


def test_describe_optimizer_in_kohya_form():
    assert describe_optimizer(compose_optimizer("adamw8bit")) == (
        "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.01,betas=(0.9, 0.999))"
    )
    assert describe_optimizer(compose_optimizer("dadapt_adam")) == (
        "dadaptation.dadapt_adam.DAdaptAdam(decouple=True,weight_decay=0.4,betas=(0.9, 0.99))"
    )
    assert describe_optimizer(OptimizerConfig()) == "torch.optim.adamw.AdamW"
