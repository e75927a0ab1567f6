"""Shared fixtures: the tiny model built once per session, configs composed from conf/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from train.config import RunConfig, register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# The machinery's tests run on the tiny random-weight stack (seconds per run, no meaning needed); the
# embedded default is the world (model=world, dataset=world, evaluate=world), which its own tests choose.
FAST_STACK = {"model": "tiny", "dataset": "synthetic", "evaluate": "demo"}
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
register_configs()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny SD1.5-shaped model in diffusers layout, built once and loaded from disk by each test."""
    from train.models.tiny import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """The tiny SDXL-shaped model in diffusers layout, built once and loaded from disk by each test."""
    from train.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def on_fast_stack(args) -> list[str]:
    """``args`` with the fast stack's group choices for the groups they do not choose themselves."""
    chosen = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    # After the args: flags such as -m come first on a command line, and a group choice's place does not matter.
    return list(args) + [f"{group}={option}" for group, option in FAST_STACK.items() if group not in chosen]


def compose_run(overrides: list[str], output_dir: Path, cache_dir: Path, fast: bool = True) -> RunConfig:
    """Compose conf/config.yaml with overrides, as `python -m train` would, and type-check it; ``fast``: on
    the fast stack for the groups the overrides do not choose."""
    from train.__main__ import to_run_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}",
                       *(on_fast_stack(overrides) if fast else overrides)],
        )
    return to_run_config(cfg)


@pytest.fixture
def make_run(tmp_path, tiny_model_dir):
    """Build a RunConfig on the tiny model; each call gets its own output dir."""
    counter = iter(range(1000))

    def _make(*overrides: str, cache_dir: Path | None = None) -> RunConfig:
        out = tmp_path / f"run{next(counter)}"
        cache = cache_dir or tmp_path / "cache"
        return compose_run([f"model.path={tiny_model_dir}", *overrides], out, cache)

    return _make


def compose_score(overrides: list[str], output_dir: Path, cache_dir: Path):
    """Compose conf/score.yaml (``python -m evaluate``) with overrides and type-check it."""
    from evaluate.score_config import register_score_config
    from train.__main__ import to_run_config

    register_score_config()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="score",
            overrides=[f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}", *on_fast_stack(overrides)],
        )
    return to_run_config(cfg)


@pytest.fixture(scope="session")
def fault_sweep(tiny_model_dir, tmp_path_factory):
    """One real sweep shared by several test modules: an OOM, a NaN and a killed worker among five trials.

    Returns (sweep dir, the finished `python -m train -m` process).
    """
    from tests.sweeps import run_sweep, sweep_args

    tmp_path = tmp_path_factory.mktemp("fault-sweep")
    sweep_dir = tmp_path / "sweep"
    faults = "[{trial:0,kind:oom,at_step:2},{trial:1,kind:nan,at_step:2},{trial:2,kind:exit,at_step:2}]"
    args = sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=5",
        f"hydra.sweeper.fault_injection={faults}",
        logger="tensorboard",
    )
    return sweep_dir, run_sweep(args, tmp_path, tmp_path / "cache")
