"""Warm start (hydra.sweeper.warm_start): a new study runs a finished study's best configurations first."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from sweeper.space.search_space import parse_search_space
from sweeper.store.warm_start import load_warm_start
from tests.sweeps import load, run_sweep, synthetic_sweep_args
from train.errors import ConfigError

DEMO = {
    "optimizer.learning_rate": "tag(log, interval(1e-4, 1e-2))",
    "network.dim": "choice(2, 4, 8, 16)",
    "_alpha_ratio": "choice(0.5, 1.0)",
}
DISTS = {
    "optimizer.learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
    "network.dim": CategoricalDistribution([2, 4, 8, 16]),
    "_alpha_ratio": CategoricalDistribution([0.5, 1.0]),
}
# (learning rate, dim, alpha ratio, value) of the source study's finished trials
FINISHED = [(1e-3, 4, 1.0, 0.30), (5e-3, 8, 0.5, 0.10), (2e-4, 2, 1.0, 0.50), (3e-3, 16, 1.0, 0.20)]


def _source(sweep_dir: Path, direction: str = "minimize", name: str = "demo", rows=FINISHED) -> Path:
    """A finished sweep's dir as a sweep leaves it: its study in optuna.db, one failed trial among the finished."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}", direction=direction)
    for lr, dim, ratio, value in rows:
        params = {"optimizer.learning_rate": lr, "network.dim": dim, "_alpha_ratio": ratio}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=DISTS, value=value))
    failed = optuna.trial.create_trial(
        params={"network.dim": 4}, distributions={"network.dim": DISTS["network.dim"]}, state=optuna.trial.TrialState.FAIL
    )
    study.add_trial(failed)
    return sweep_dir


def _load(source, space_params=DEMO, top=2, directions=("minimize",), study=None, tmp_path=Path("/tmp")):
    return load_warm_start(str(source), study, top, parse_search_space(space_params), list(directions), tmp_path)


def test_the_best_finished_trials_come_first_by_the_studys_direction(tmp_path):
    source = _source(tmp_path / "old")
    best = _load(source, top=3, tmp_path=tmp_path)
    assert [e["network.dim"] for e in best.entries] == [8, 16, 4]  # values 0.10, 0.20, 0.30
    assert best.entries[0] == {"optimizer.learning_rate": 5e-3, "network.dim": 8, "_alpha_ratio": 0.5}
    assert best.study_name == "demo" and "3 best configurations of study 'demo'" in best.describe()
    maximizing = _source(tmp_path / "max", direction="maximize")
    assert [e["network.dim"] for e in _load(maximizing, directions=["maximize"], tmp_path=tmp_path).entries] == [2, 4]


def test_a_top_trial_outside_this_sweeps_ranges_is_left_out_and_named(tmp_path):
    narrower = {**DEMO, "optimizer.learning_rate": "tag(log, interval(1e-4, 4e-3))"}
    best = _load(_source(tmp_path / "old"), narrower, top=2, tmp_path=tmp_path)
    assert [e["network.dim"] for e in best.entries] == [16, 4]  # trial 1 (lr 5e-3) no longer fits
    assert best.left_out == ["trial 1: optimizer.learning_rate: 0.005 is outside [0.0001, 0.004]"]
    assert "left out trial 1" in best.describe()


def test_an_enqueued_warm_start_is_what_a_new_study_runs_first(tmp_path):
    space = parse_search_space(DEMO)
    best = _load(_source(tmp_path / "old"), top=2, tmp_path=tmp_path)
    study = optuna.create_study(direction="minimize")
    for values in best.entries:
        study.enqueue_trial(space.enqueue_params(values), skip_if_exists=True)
    asked = [space.sample(study.ask()) for _ in best.entries]
    assert [a["network.dim"] for a in asked] == [8, 16] and asked[0]["optimizer.learning_rate"] == 5e-3


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("foreign-key", "study 'demo' searched network.dim, which this sweep does not; this sweep searches:"),
        ("direction", "study 'demo' was to minimize; this sweep is to maximize"),
        ("nothing-finished", "study 'demo' in"),
        ("several-studies", "holds a, b; name one with hydra.sweeper.warm_start_study=<name>"),
        ("no-study-file", "no optuna.db there; name a finished sweep's dir or a storage URL"),
        ("nothing-fits", "fits this sweep's ranges: trial 1: network.dim: 8 is not one of the choices [32, 64]; trial 3"),
    ],
)
def test_a_source_that_does_not_fit_is_one_message(tmp_path, case, message):
    space, directions, source = DEMO, ["minimize"], tmp_path / "old"
    if case == "foreign-key":
        space = {k: v for k, v in DEMO.items() if k != "network.dim"}
        _source(source)
    elif case == "direction":
        directions = ["maximize"]
        _source(source)
    elif case == "nothing-finished":
        _source(source, rows=[])
    elif case == "several-studies":
        _source(source, name="a")
        _source(source, name="b")
    elif case == "nothing-fits":
        space = {**DEMO, "network.dim": "choice(32, 64)"}
        _source(source)
    with pytest.raises(ConfigError) as err:
        _load(source, space, directions=directions, tmp_path=tmp_path)
    assert str(err.value).startswith("hydra.sweeper.warm_start") and message in str(err.value), str(err.value)


def test_a_sweep_warm_started_from_a_finished_one_runs_its_best_first(tiny_model_dir, tmp_path):
    """Synthetic trials, through ``python -m train -m`` as users run it; then a source that does not fit: exit 2."""
    source = _source(tmp_path / "old")
    sweep_dir = tmp_path / "new"
    args = synthetic_sweep_args(
        tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=3", f"hydra.sweeper.warm_start={source}",
        "hydra.sweeper.warm_start_top=2", "hydra.sweeper.cpu_slots=1",
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sorted(load(sweep_dir).trials, key=lambda t: t.number)
    assert [t.params["network.dim"] for t in trials[:2]] == [8, 16]
    assert trials[0].params["optimizer.learning_rate"] == 5e-3 and len(trials) == 3
    assert "warm start: 2 best configurations of study 'demo'" in result.stdout + result.stderr

    other = tmp_path / "other"  # a study that searched a key this sweep does not
    other.mkdir()
    study = optuna.create_study(study_name="demo", storage=f"sqlite:///{other / 'optuna.db'}")
    dists = {**DISTS, "network.conv_dim": CategoricalDistribution([4, 8])}
    params = {"optimizer.learning_rate": 1e-3, "network.dim": 4, "_alpha_ratio": 1.0, "network.conv_dim": 8}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.1))
    args = synthetic_sweep_args(tiny_model_dir, tmp_path / "refused", f"hydra.sweeper.warm_start={other}")
    refused = run_sweep(args, tmp_path, tmp_path / "cache")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert "hydra.sweeper.warm_start: study 'demo' searched network.conv_dim" in errors[0]
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused" / "0").exists()  # no trial ran
