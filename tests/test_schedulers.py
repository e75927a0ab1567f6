"""Learning-rate schedules: expected lr at chosen steps, warmup ratios, piecewise strings, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from train import schedulers
from train.config import register_configs
from train.errors import ConfigError
from train.schedulers import build_scheduler, check_scheduler, parse_piecewise_schedule, resolve_warmup_steps

CONF = Path(__file__).resolve().parents[1] / "conf"


def sgd(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def lrs_over(scheduler, steps: int, group: int = 0) -> list[float]:
    """lr used at steps 0..steps-1, stepping like the training loop."""
    seen = []
    for _ in range(steps):
        seen.append(scheduler.get_last_lr()[group])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def test_constant_and_warmup_ramp():
    assert lrs_over(schedulers.constant(sgd(1.0), 5), 5) == [1.0] * 5
    lrs = lrs_over(schedulers.constant_with_warmup(sgd(1.0), 20, warmup_steps=4), 8)
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "given, total, expected", [(0.1, 100, 10), (0.25, 10, 2), (5, 100, 5), (5.0, 100, 5), (0, 9, 0)]
)
def test_warmup_steps_count_or_ratio(given, total, expected):
    assert resolve_warmup_steps(given, total) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_bad_warmup_steps(bad):
    with pytest.raises(ConfigError, match="scheduler.factory.warmup_steps"):
        resolve_warmup_steps(bad, 100)


def test_warmup_ratio_through_a_schedule():
    lrs = lrs_over(schedulers.linear(sgd(1.0), 20, warmup_steps=0.25), 20)
    assert lrs[:6] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5 + 15 // 2] == pytest.approx(1 - 7 / 15)


def test_cosine_midpoint_and_restarts():
    lrs = lrs_over(schedulers.cosine(sgd(1.0), 110, warmup_steps=10), 111)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5) and lrs[110] == pytest.approx(0.0)
    lrs = lrs_over(schedulers.cosine_with_restarts(sgd(1.0), 100, num_cycles=2), 100)
    assert [lrs[0], lrs[25], lrs[50], lrs[75]] == pytest.approx([1.0, 0.5, 1.0, 0.5])


def test_polynomial_reaches_lr_end():
    lrs = lrs_over(schedulers.polynomial(sgd(1.0), 10, power=2.0, lr_end=1e-3), 12)
    assert lrs[5] == pytest.approx((1 - 1e-3) * 0.5**2 + 1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[11] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="scheduler.factory.lr_end"):
        schedulers.polynomial(sgd(1e-4), 10, lr_end=1e-3)


def test_piecewise_absolute_values_at_boundaries():
    scheduler = schedulers.piecewise(sgd(1e-4, 5e-5), 30000, "5e-6:2000, 5e-7:10000, 5e-8")
    expected = {0: 5e-6, 1999: 5e-6, 2000: 5e-7, 9999: 5e-7, 10000: 5e-8, 29999: 5e-8}
    for step, lr in expected.items():
        assert scheduler.lr_lambdas[0](step) * 1e-4 == pytest.approx(lr, rel=1e-9)
        # A second group keeps its ratio (here 1/2) to optimizer.learning_rate.
        assert scheduler.lr_lambdas[1](step) * 5e-5 == pytest.approx(lr / 2, rel=1e-9)
    short = schedulers.piecewise(sgd(1e-4), 10, "1e-3:2, 1e-5")
    assert lrs_over(short, 4) == pytest.approx([1e-3, 1e-3, 1e-5, 1e-5])


def test_piecewise_last_entry_with_a_step_holds_its_value():
    entries = parse_piecewise_schedule("5e-5:100, 5e-6:1500, 5e-7:10000, 5e-8:20000")
    assert entries == [(5e-5, 100), (5e-6, 1500), (5e-7, 10000), (5e-8, 20000)]
    scheduler = schedulers.piecewise(sgd(1e-4), 30000, "5e-5:100, 5e-8:200")
    assert scheduler.lr_lambdas[0](500) * 1e-4 == pytest.approx(5e-8)
    assert parse_piecewise_schedule(" 5e-6 ") == [(5e-6, None)]


@pytest.mark.parametrize(
    "schedule, bad_part",
    [
        ("", "''"),
        ("abc", "abc"),
        ("5e-6:abc, 1e-7", "abc"),
        ("5e-6:2000, 5e-7:1000, 5e-8", "1000"),
        ("5e-6:2000, 5e-7:2000, 5e-8", "2000"),
        ("5e-6, 5e-7:100", "5e-6"),
        ("5e-6:2000,", "entry 2"),
        ("5e-6:2000:3, 1e-7", "2000:3"),
        ("-1e-5:10, 1e-6", "-1e-5"),
        ("5e-6:0, 1e-7", "0"),
        ("5e-6:2000, 1e-7:", "1e-7:"),
        ("nan:10, 1e-7", "nan"),
    ],
)
def test_bad_piecewise_strings(schedule, bad_part):
    with pytest.raises(ConfigError, match="scheduler.factory.schedule") as error:
        parse_piecewise_schedule(schedule)
    assert bad_part in str(error.value)


def test_piecewise_needs_a_base_lr():
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        schedulers.piecewise(sgd(0.0), 10, "1e-4")


def test_shipped_names_match_conf_files():
    assert sorted(schedulers.SHIPPED_SCHEDULERS) == sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml"))


@pytest.mark.parametrize("name", schedulers.SHIPPED_SCHEDULERS)
def test_every_scheduler_config_composes_and_builds(name):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=None, overrides=[f"+scheduler={name}"])
    assert cfg.scheduler.name == name
    scheduler = build_scheduler(cfg.scheduler, sgd(1e-4), 100)
    lrs = lrs_over(scheduler, 100)
    assert all(0 <= lr <= 1e-4 + 1e-12 for lr in lrs) and max(lrs) > 0


def test_build_scheduler_rejects_unknown_options_and_targets():
    cfg = OmegaConf.create({"factory": {"_target_": "train.schedulers.linear", "_partial_": True, "num_cycles": 2}})
    with pytest.raises(ConfigError, match="scheduler.factory.num_cycles"):
        build_scheduler(cfg, sgd(1.0), 10)
    cfg = OmegaConf.create({"factory": {"_target_": "train.schedulers.cosinee"}})
    with pytest.raises(ConfigError, match=r"scheduler.factory._target_.*cosine_with_restarts"):
        build_scheduler(cfg, sgd(1.0), 10)
    with pytest.raises(ConfigError, match="train.max_train_steps"):
        build_scheduler(OmegaConf.create({"factory": {"_target_": "train.schedulers.constant"}}), sgd(1.0), 0)
    constant = OmegaConf.create({"factory": {"_target_": "train.schedulers.constant"}})
    assert math.isclose(build_scheduler(constant, sgd(1.0), 1).get_last_lr()[0], 1.0)


def test_check_scheduler_catches_bad_strings_before_training():
    good = OmegaConf.create({"factory": {"_target_": "train.schedulers.piecewise", "schedule": "1e-4:10, 1e-5"}})
    check_scheduler(good, learning_rate=1e-4)
    bad = OmegaConf.create({"factory": {"_target_": "train.schedulers.piecewise", "schedule": "1e-4:x, 1e-5"}})
    with pytest.raises(ConfigError, match="scheduler.factory.schedule"):
        check_scheduler(bad, learning_rate=1e-4)
