"""create_study from hydra.sweeper, resume, stale-trial recovery and the heartbeat thread."""

from __future__ import annotations

import time
import uuid

import optuna
import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeper.config import SweeperConfig
from sweeper.config_store import SAMPLER_NODES
from sweeper.store.storage import make_storage
from sweeper.store.study import (
    PRUNERS,
    SAMPLERS,
    STALE_REASON,
    Heartbeat,
    create_study,
    recover_stale_trials,
    requeue_failed,
    session_seed,
)
from tests.services import postgres_url
from train.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed"),
]


def cfg(**kwargs) -> SweeperConfig:
    return SweeperConfig(**{"study_name": f"t-{uuid.uuid4().hex[:12]}", "direction": "maximize", **kwargs})


def run_trials(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        trial.report(x, step=0)
        study.tell(trial, x + y)


@pytest.mark.parametrize("target", sorted(SAMPLERS))
def test_every_shipped_sampler(tmp_path, target):
    spec = {"_target_": target, "seed": 0}
    if target.endswith("GridSampler"):
        spec["search_space"] = {"x": [0.0, 0.5, 1.0], "y": [0.0, 1.0]}
    study = create_study(cfg(sampler=spec), make_storage(None, tmp_path))
    assert isinstance(study.sampler, get_object(target))
    run_trials(study, 3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_tpe_options_from_a_hydra_node(tmp_path):
    spec = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "multivariate": True, "constant_liar": True})
    study = create_study(cfg(sampler=spec), make_storage(None, tmp_path))
    assert study.sampler._multivariate and study.sampler._constant_liar


def test_grid_from_a_hydra_node(tmp_path):
    spec = OmegaConf.create({"_target_": "optuna.samplers.GridSampler", "search_space": {"x": [0.0, 1.0], "y": [0.5]}})
    config = cfg(sampler=spec, direction=["maximize"])  # a one-element list is single-objective
    study = create_study(config, make_storage(None, tmp_path))
    run_trials(study, 2)  # the tell of the last grid point must not call study.stop() outside optimize()
    assert sorted(t.params["x"] for t in study.trials) == [0.0, 1.0]


@pytest.mark.parametrize("target", sorted(PRUNERS))
def test_every_shipped_pruner(tmp_path, target):
    spec = {"_target_": target, **({"percentile": 25.0} if target.endswith("PercentilePruner") else {})}
    study = create_study(cfg(pruner=spec), make_storage(None, tmp_path))
    assert type(study.pruner).__name__ == target.rsplit(".", 1)[1]
    run_trials(study, 3)
    study.ask().should_prune()


@pytest.mark.parametrize(
    ("key", "spec", "expected"),
    [
        ("sampler", {"_target_": "optuna.samplers.NoSuchSampler"}, "hydra.sweeper.sampler._target_: unknown"),
        ("pruner", {"_target_": "no.such.Pruner"}, "hydra.sweeper.pruner._target_: unknown"),
        ("sampler", {"seed": 0}, "hydra.sweeper.sampler: needs a _target_"),
        ("sampler", {"_target_": "optuna.samplers.GridSampler"}, "GridSampler needs search_space"),
        ("sampler", {"_target_": "optuna.samplers.TPESampler", "bogus": 1}, "hydra.sweeper.sampler.bogus: TPESampler takes no bogus"),
        ("pruner", {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": -1}, "hydra.sweeper.pruner:"),
        ("pruner", {"_target_": "optuna.samplers.RandomSampler"}, "is not an optuna.pruners"),
    ],
)
def test_bad_sampler_or_pruner(tmp_path, key, spec, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")) as info:
        create_study(cfg(**{key: spec}), make_storage(None, tmp_path))
    if "unknown" in expected:  # the message lists what we ship
        assert "optuna.samplers.TPESampler" in str(info.value) or "optuna.pruners.MedianPruner" in str(info.value)


def test_missing_optional_dependency(tmp_path, monkeypatch):
    real = __import__("importlib").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    with pytest.raises(ConfigError, match="CmaEsSampler needs pip install cmaes"):
        create_study(cfg(sampler={"_target_": "optuna.samplers.CmaEsSampler"}), make_storage(None, tmp_path))


def test_multi_objective(tmp_path):
    config = cfg(
        direction=["maximize", "minimize"],
        objectives=["clip_t", "val_loss"],
        sampler={"_target_": "optuna.samplers.NSGAIISampler", "seed": 0},
    )
    study = create_study(config, make_storage(None, tmp_path))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    trial = study.ask()
    study.tell(trial, [1.0, 2.0])
    assert study.best_trials[0].values == [1.0, 2.0]
    with pytest.raises(ConfigError, match="CmaEsSampler is single-objective"):
        config = cfg(
            direction=["maximize", "minimize"],
            objectives=["clip_t", "val_loss"],
            sampler={"_target_": "optuna.samplers.CmaEsSampler"},
        )
        create_study(config, make_storage(None, tmp_path))


def test_resume_keeps_trials_and_checks_directions(tmp_path):
    config = cfg()
    run_trials(create_study(config, make_storage(None, tmp_path)), 2)
    again = create_study(config, make_storage(None, tmp_path))  # a new controller, same command
    assert len(again.trials) == 2
    with pytest.raises(ConfigError, match="hydra.sweeper.direction: study .* already exists"):
        create_study(SweeperConfig(study_name=config.study_name, direction="minimize"), make_storage(None, tmp_path))


# ------------------------------------------------------------------ stale trials
def _running(study: optuna.Study, heartbeat_age: float | None) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    if heartbeat_age is not None:
        trial.set_user_attr("heartbeat", time.time() - heartbeat_age)
    return trial


@pytest.mark.parametrize("url", ["sqlite:///{}/o.db", "journal:///{}/o.log"])
def test_recover_stale_trials_without_storage_heartbeat(tmp_path, url):
    storage = make_storage(url.format(tmp_path), tmp_path)
    study = create_study(cfg(), storage)
    dead, alive = _running(study, heartbeat_age=100), _running(study, heartbeat_age=1)
    assert recover_stale_trials(study, storage, grace_period=30) == [dead.number]
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    assert trials[dead.number].user_attrs["fail_reason"] == STALE_REASON and trials[dead.number].user_attrs["requeued"]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs == {"retry_of": dead.number}
    assert retry.system_attrs["fixed_params"] == dead.params
    # A second controller starting later re-queues nothing more.
    assert recover_stale_trials(study, storage, grace_period=30) == []
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert study.ask().number == retry.number  # enqueued retries run first


def test_recover_finishes_a_requeue_interrupted_by_a_crash(tmp_path):
    storage = make_storage(None, tmp_path)
    study = create_study(cfg(), storage)
    trial = _running(study, heartbeat_age=None)
    trial.set_user_attr("fail_reason", STALE_REASON)
    trial.set_user_attr("requeued", True)
    study.tell(trial, state=TrialState.FAIL)  # the crash came before the enqueue
    assert recover_stale_trials(study, storage, grace_period=30) == [trial.number]
    assert recover_stale_trials(study, storage, grace_period=30) == []


def test_heartbeat_thread_keeps_trials_alive(tmp_path):
    storage = make_storage(None, tmp_path)
    study = create_study(cfg(), storage)
    trial = _running(study, heartbeat_age=100)
    heartbeat = Heartbeat(study, storage, interval=0.05)
    heartbeat.set_running([trial])
    heartbeat.start()
    time.sleep(0.2)
    study.tell(trial, 1.0)  # told while the thread runs: it must not die on a finished trial
    time.sleep(0.1)
    heartbeat.stop()
    assert time.time() - study.trials[0].user_attrs["heartbeat"] < 1


def test_recover_on_postgresql_uses_optuna_heartbeat(tmp_path):
    storage = make_storage(postgres_url(), tmp_path, heartbeat_interval=1, grace_period=2)
    config = cfg()
    study = create_study(config, storage)
    try:
        dead, alive = study.ask(), study.ask()
        for trial in (dead, alive):
            trial.suggest_int("dim", 4, 64)
            storage.record_heartbeat(trial._trial_id)
        heartbeat = Heartbeat(study, storage, interval=1)
        heartbeat.set_running([alive])
        heartbeat.start()
        time.sleep(3.2)
        stale = storage._get_stale_trial_ids(study._study_id)  # what optuna.storages.fail_stale_trials would fail
        assert stale == [dead._trial_id]
        assert recover_stale_trials(study, storage, grace_period=2) == [dead.number]
        heartbeat.stop()
        trials = study.get_trials()
        assert trials[dead.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
        optuna.storages.fail_stale_trials(study)  # Optuna's own check agrees nothing else is stale
        assert study.get_trials()[alive.number].state == TrialState.RUNNING
        assert [t.user_attrs["retry_of"] for t in study.get_trials(states=(TrialState.WAITING,))] == [dead.number]
        assert recover_stale_trials(study, storage, grace_period=2) == []
    finally:
        optuna.delete_study(study_name=config.study_name, storage=storage)


def test_multi_objective_needs_one_metric_per_direction():
    with pytest.raises(ConfigError, match="hydra.sweeper.objectives: name one evaluation metric per direction"):
        cfg(direction=["maximize", "minimize"], objectives=["clip_t"])


# ------------------------------------------------------------------ one sampler stream per controller session
def _first_draws(study: optuna.Study, n: int = 4) -> list[float]:
    draws = []
    for _ in range(n):
        trial = study.ask()
        draws.append(trial.suggest_float("x", 0, 1))
        study.tell(trial, draws[-1])
    return draws


def test_each_controller_session_draws_its_own_stream(tmp_path):
    storage = make_storage(None, tmp_path)
    config = cfg(sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 7})
    first = create_study(config, storage)
    assert first.user_attrs["controller_sessions"] == 1
    assert _first_draws(first) == _first_draws(create_study(cfg(sampler=config.sampler), make_storage(None, tmp_path / "b")))
    resumed = create_study(config, storage)  # a resume, or a second host on the same storage
    second = create_study(config, storage)
    assert resumed.user_attrs["controller_sessions"] == 3
    streams = [_first_draws(s) for s in (first, resumed, second)]
    assert len({x for stream in streams for x in stream}) == 12  # no draw repeats another session's


def test_session_seeds_are_reproducible_and_distinct():
    assert session_seed(0, "s", 0) == 0 and session_seed(None, "s", 3) is None
    assert session_seed(0, "s", 1) == session_seed(0, "s", 1)
    assert len({session_seed(0, "s", k) for k in range(1, 50)} | {session_seed(0, "t", 1)}) == 50


def test_tpe_is_parallel_aware_unless_told_otherwise(tmp_path):
    storage = make_storage(None, tmp_path)
    assert create_study(cfg(), storage).sampler._constant_liar
    told = {"_target_": "optuna.samplers.TPESampler", "constant_liar": False}
    assert not create_study(cfg(sampler=told), storage).sampler._constant_liar


def test_postgresql_trial_that_never_beat_is_stale_after_the_grace_period(tmp_path):
    storage = make_storage(postgres_url(), tmp_path, heartbeat_interval=1, grace_period=2)
    config = cfg()
    study = create_study(config, storage)
    try:
        orphan = study.ask()  # its controller died before recording a first heartbeat
        orphan.suggest_int("dim", 4, 64)
        assert recover_stale_trials(study, storage, grace_period=2) == []
        time.sleep(2.5)
        assert recover_stale_trials(study, storage, grace_period=2) == [orphan.number]
    finally:
        optuna.delete_study(study_name=config.study_name, storage=storage)


def test_a_retry_marked_before_a_kill_is_enqueued_by_the_next_recovery(tmp_path):
    storage = make_storage(None, tmp_path)
    study = create_study(cfg(), storage)
    failed = _running(study, heartbeat_age=1)
    failed.set_user_attr("retry_attempt", 1)  # what the controller marks before telling a failure it retries
    failed.set_user_attr("requeued", True)
    study.tell(failed, state=TrialState.FAIL)  # ...and the controller died before enqueuing the retry
    assert recover_stale_trials(study, storage, grace_period=30) == [failed.number]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs == {"retry_of": failed.number, "attempt": 1}
    assert requeue_failed(study, storage) == []  # once only


def test_a_sampler_chosen_by_target_over_the_tpe_group_drops_tpes_defaults(tmp_path):
    # hydra.sweeper.sampler: {_target_: ...RandomSampler} in a config merges over the tpe group's settings.
    spec = {**SAMPLER_NODES["tpe"], "_target_": "optuna.samplers.RandomSampler", "seed": 3}
    study = create_study(cfg(sampler=spec), make_storage(None, tmp_path))
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    changed = {**spec, "n_startup_trials": 5}  # set by the user, not left by the group: said, not dropped
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.sampler\.n_startup_trials: RandomSampler takes no"):
        create_study(cfg(sampler=changed), make_storage(None, tmp_path / "b"))


@pytest.mark.parametrize("name", sorted(set(SAMPLER_NODES) - {"grid"}))
def test_every_sampler_group_option_builds(tmp_path, name):
    # hydra/sweeper/sampler=<name> as composed: every setting it lists reaches the installed Optuna's sampler.
    study = create_study(cfg(sampler=dict(SAMPLER_NODES[name])), make_storage(None, tmp_path))
    assert type(study.sampler).__name__ == get_object(SAMPLER_NODES[name]["_target_"]).__name__


PRUNING = {  # settings that let each pruner judge after a few trials of 8 steps
    "optuna.pruners.MedianPruner": {"n_startup_trials": 3},
    "optuna.pruners.PercentilePruner": {"percentile": 25.0, "n_startup_trials": 3},
    "optuna.pruners.SuccessiveHalvingPruner": {"min_resource": 1, "reduction_factor": 2},
    "optuna.pruners.HyperbandPruner": {"min_resource": 1, "max_resource": 8, "reduction_factor": 2},
    "optuna.pruners.WilcoxonPruner": {"p_threshold": 0.1},
    "optuna.pruners.NopPruner": {},
}


def _curve_trial(study, level: float) -> int | None:
    """One synthetic trial reporting ``level`` (+ a small rise) at steps 1..8: the step it was pruned at, or None."""
    trial = study.ask()
    for step in range(1, 9):
        trial.report(level + 0.01 * step, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, level + 0.08)
    return None


@pytest.mark.parametrize("target", sorted(PRUNERS))
def test_every_shipped_pruner_prunes_a_clearly_worse_trial(tmp_path, target):
    """Synthetic learning curves (no training): six good trials, then five far worse; Nop never prunes.

    Hyperband puts each trial in a bracket by a hash of the study name and trial number (a fixed name
    here), and its full-budget bracket never stops a trial early: most, not all, of the bad ones stop.
    """
    assert set(PRUNING) == set(PRUNERS)
    config = cfg(study_name="pruning", pruner={"_target_": target, **PRUNING[target]})
    study = create_study(config, make_storage(None, tmp_path))
    good = [_curve_trial(study, 1.0 + 0.001 * i) for i in range(6)]
    bad = [_curve_trial(study, 0.0) for _ in range(5)]
    pruned = [step for step in bad if step is not None]
    assert good == [None] * 6, good  # each good trial rises above the ones before it
    if target.endswith("NopPruner"):
        assert good + bad == [None] * 11
    elif target.endswith("HyperbandPruner"):
        assert len(pruned) >= 3, bad
    else:
        assert len(pruned) == 5, bad
