"""The Hydra side of the sweeper: command-line arguments and the typed hydra.sweeper config."""

from __future__ import annotations

import pytest
from optuna.distributions import IntDistribution

from sweeper.config import check_sweeper_arguments
from sweeper.hydra_sweeper import split_arguments, sweeper_config
from sweeper.plugin_compat import fix_searched_keys
from sweeper.slots.pool import concurrent_slots
from sweeper.space.custom import custom_search_space
from sweeper.space.grid import with_grid
from sweeper.space.search_space import parse_search_space
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


def test_unknown_sweeper_keys_name_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.n_trails: unknown key; did you mean 'n_trials'\? valid keys"):
        sweeper_config({"n_trails": 3})
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.sampler\.n_startup: unknown sampler setting; did you mean"):
        check_sweeper_arguments(["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.n_startup=3"])
    check_sweeper_arguments(["hydra.sweeper.sampler.population_size=8", "hydra.sweeper.n_jobs=2", "x=1"])


def test_the_plugins_settings_have_its_meaning():
    cfg = sweeper_config({"params": None, "study_name": None, "n_jobs": 1, "custom_search_space": "m.f"})
    assert cfg.params is None and cfg.study_name is None and cfg.n_jobs == 1
    assert cfg.direction is None and cfg.directions() is None  # taken from the objective when the sweep starts
    with pytest.raises(ConfigError, match="hydra.sweeper.n_jobs"):
        sweeper_config({"n_jobs": 0})


def test_the_deprecated_search_space_becomes_params():
    space = {
        "a": {"type": "categorical", "choices": [1, "x"]},
        "b": {"type": "int", "low": 0, "high": 10, "step": 2},
        "c": {"type": "int", "low": 1, "high": 100, "log": True},
        "d": {"type": "float", "low": 0, "high": 1},
        "e": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    }
    cfg = sweeper_config({"search_space": space})
    assert cfg.params == {
        "a": "choice(1,x)",
        "b": "range(0, 10, step=2)",
        "c": "tag(log, int(interval(1, 100)))",
        "d": "interval(0.0, 1.0)",
        "e": "tag(log, interval(1e-05, 0.01))",
    }
    parsed = parse_search_space(cfg.params).distributions
    assert parsed["b"] == IntDistribution(0, 10, step=2) and parsed["c"] == IntDistribution(1, 100, log=True)
    assert sweeper_config({"search_space": space, "params": {"z": "choice(1,2)"}}).params == {"z": "choice(1,2)"}


def test_a_fixed_command_line_value_leaves_the_search_everywhere():
    cfg = sweeper_config(
        {
            "params": {"network.dim": "choice(2,4)", "_ratio": "choice(0.5,1.0)", "noise": "choice(none,offset)"},
            "conditional": [{"when": {"noise": ["offset"]}, "params": {"noise.sampler.offset": "interval(0.0,0.1)"}}],
            "derived": {"network.alpha": "network.dim * _ratio"},
        }
    )
    base = fix_searched_keys(cfg, ["network.dim=8", "noise.sampler.offset=0.05", "+network.alpha=3", "train.seed=1"])
    assert base == ["+network.alpha=3", "train.seed=1"]  # not a plain override of a searched key: passed on
    assert cfg.params["network.dim"] == "8" and cfg.conditional == []
    space = parse_search_space(cfg.params, cfg.conditional, cfg.derived)
    assert "network.dim" not in space.distributions
    assert space.values_with({"_ratio": 0.5})["network.alpha"] == 4.0  # derived from the fixed value


def test_n_jobs_caps_the_slots():
    assert concurrent_slots([None, None, None], 2) == [None, None]
    assert concurrent_slots(["0", "1"], None) == ["0", "1"]
    assert concurrent_slots(["0", "1"], 4) == ["0", "1"]


def test_the_grid_is_built_from_params_as_the_plugin_builds_it():
    space = parse_search_space({"x": "choice(-1, 1)", "y": "range(-1.0, 1.0, step=1)", "z": "choice(foo, bar)"})
    spec = with_grid({"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": 0}, space)
    assert spec["search_space"] == {"x": [-1, 1], "y": [-1.0, 0.0], "z": ["foo", "bar"]}  # tests/conf/test_grid.yaml
    assert "_partial_" not in spec
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.params\.lr: the grid sampler needs discrete values"):
        with_grid({"_target_": "optuna.samplers.GridSampler"}, parse_search_space({"lr": "interval(0, 1)"}))


def test_custom_search_space_that_cannot_be_imported_names_the_key():
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.custom_search_space: cannot import 'no_such_module\.f'"):
        custom_search_space("no_such_module.f", None)
