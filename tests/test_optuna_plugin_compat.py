"""Configs written for the official Optuna sweeper plugin, run through the real CLI.

The fixtures in tests/optuna_plugin/ are the plugin's own example configs
(example/conf, example/custom-search-space, tests/conf/test_grid.yaml) on this
project's keys, kept in a user's config dir: presets of their own (sweep/) and a
primary config of their own (my_sweep.yaml). Most sweeps here run synthetic
trials (the sweep machinery under test: each trial composes its config as a
real one does, then sleeps); one runs real trials on the tiny model.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.sweeps import ROOT, load, run_sweep, sweep_args, synthetic_sweep_args

pytestmark = pytest.mark.slow
USER_CONF = ROOT / "tests" / "optuna_plugin" / "conf"


def _args(tiny_model_dir, sweep_dir, preset: str, *extra: str, synthetic: bool = True, flag: bool = True) -> list[str]:
    """The usual test sweep with a preset of the user's instead of sweep=demo (``--config-dir`` unless not ``flag``)."""
    build = synthetic_sweep_args if synthetic else sweep_args
    args = [a for a in build(tiny_model_dir, sweep_dir) if not a.startswith(("sweep=", "train.max", "evaluate."))]
    return [*([f"--config-dir={USER_CONF}"] if flag else []), *args, f"sweep={preset}", *extra]


def _log(result) -> str:
    return result.stdout + result.stderr  # Hydra logs to stdout, errors go to stderr


def _results(sweep_dir) -> dict:
    return OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))


def test_a_preset_in_the_users_config_dir_runs_in_every_trial(tiny_model_dir, tmp_path):
    # The plugin's grid example: override hydra/sweeper and its sampler group, n_jobs, study_name, storage: null.
    result = run_sweep(_args(tiny_model_dir, tmp_path / "sw", "plugin_grid"), ROOT, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path / "sw", "sphere")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4, [t.user_attrs for t in study.trials]
    # The plugin's grid: range(2, 6, step=2) is 2 and 4 (its stop is not a grid point), times two ratios.
    assert sorted((t.params["network.dim"], t.params["_alpha_ratio"]) for t in study.trials) == [
        (2, 0.5), (2, 1.0), (4, 0.5), (4, 1.0)
    ]
    assert "the grid has 4 points; n_trials 20 capped at 4" in _log(result)
    assert "n_jobs=1: 1 of the 2 slots run trials" in _log(result)
    results = _results(tmp_path / "sw")
    assert results["name"] == "optuna" and results["best_value"] == study.best_value
    best = study.best_trial.params
    # Keys a user passes: the virtual ratio is not one of them, the derived alpha is.
    alpha = best["network.dim"] * best["_alpha_ratio"]
    assert results["best_params"] == {"network.dim": best["network.dim"], "network.alpha": alpha}


def test_the_plugins_settings_groups_and_fixed_values_from_the_command_line(tiny_model_dir, tmp_path):
    # As the plugin's own tests: hydra/sweeper=optuna, a sampler group, its settings without `+`, and a
    # fixed value for a searched key (sweep=demo searches network.dim; the derived alpha reads the fixed value).
    args = synthetic_sweep_args(
        tiny_model_dir,
        tmp_path / "sw",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=tpe",
        "hydra.sweeper.sampler.seed=123",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=null",
        "network.dim=4",
    )
    result = run_sweep(args, ROOT, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "n_jobs=3 but there are 2 CPU slots (cpu_slots): 2 trials run at once" in _log(result)
    assert "hydra/sweeper=optuna runs this sweeper with defaults the official plugin sets otherwise" in _log(result)
    assert "max_failure_rate 0.5 (plugin: 0.0)" in _log(result)
    assert "network.dim=4 on the command line: fixed, not searched" in _log(result)
    name = _results(tmp_path / "sw")["study_name"]
    assert name.startswith("no-name-")  # study_name: null, as Optuna names it
    trials = load(tmp_path / "sw", name).trials
    assert len(trials) == 4
    for t in trials:
        assert "network.dim" not in t.params
        overrides = t.user_attrs["overrides"]
        assert "network.dim=4" in overrides, overrides
        assert f"network.alpha={4 * t.params['_alpha_ratio']!r}" in overrides, overrides


def test_custom_search_space_adds_params_to_every_trial(tiny_model_dir, tmp_path):
    # The plugin's custom-search-space example, its preset found through hydra.searchpath.
    searchpath = f"hydra.searchpath=[file://{USER_CONF}]"
    result = run_sweep(_args(tiny_model_dir, tmp_path / "sw", "plugin_custom", searchpath, flag=False), ROOT, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(tmp_path / "sw", "custom-search-space").trials
    assert len(trials) == 4
    for t in trials:
        assert 0.0 <= t.params["optimizer.factory.weight_decay"] <= t.params["network.dim"] * 0.01
        assert 42 <= t.params["train.seed"] <= 45  # read from the sweep's config (train.seed: 42)
        assert f"train.seed={t.params['train.seed']}" in t.user_attrs["overrides"]
    assert "optimizer.factory.weight_decay" in _results(tmp_path / "sw")["best_params"]


def test_a_primary_config_of_the_users_own_trains_real_trials(tiny_model_dir, tmp_path):
    # --config-name: the user's primary config builds on ours and overrides the sweeper and sampler groups.
    args = _args(tiny_model_dir, tmp_path / "sw", "demo", "hydra.sweeper.n_trials=2", synthetic=False)
    args = ["--config-name=my_sweep", *[a for a in args if a != "sweep=demo"]]
    result = run_sweep(args, ROOT, tmp_path / "cache", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sampler RandomSampler" in _log(result)
    study = load(tmp_path / "sw", "my-sweep")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:  # trained: each trial's run wrote its log and its network
        assert (tmp_path / "sw" / str(t.number) / "trial.log").is_file()
        assert list((tmp_path / "sw" / str(t.number)).rglob("*.safetensors"))


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("hydra.sweeper.n_trails=3", "hydra.sweeper.n_trails: unknown key; did you mean 'n_trials'?"),
        ("+hydra.sweeper.n_trails=3", "hydra.sweeper.n_trails: unknown key; did you mean 'n_trials'?"),
        ("hydra.sweeper.sampler.n_startup=3", "hydra.sweeper.sampler.n_startup: unknown sampler setting; did you mean 'n_startup_trials'?"),
    ],
)
def test_unknown_sweeper_keys_get_one_message(tiny_model_dir, tmp_path, argument, message):
    result = run_sweep(synthetic_sweep_args(tiny_model_dir, tmp_path / "sw", argument), ROOT, tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr
    assert "valid keys" in result.stderr or "tpe takes" in result.stderr
    assert "Traceback" not in result.stderr
