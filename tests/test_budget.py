"""TrialBudget: n_trials is a total for the study, however many controllers ask at once."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.config import SweeperConfig
from sweeper.store.budget import TrialBudget
from sweeper.store.storage import make_storage, study_lock
from sweeper.store.study import STALE_REASON, create_study, recover_stale_trials
from tests.services import mysql_url, postgres_url, redis_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def new_study(storage, **kwargs) -> optuna.Study:
    return create_study(SweeperConfig(**{"study_name": f"t-{uuid.uuid4().hex[:12]}", "direction": "maximize", **kwargs}), storage)


def test_asks_exactly_n_trials(tmp_path):
    storage = make_storage(None, tmp_path)
    study = new_study(storage)
    budget = TrialBudget(study, storage, n_trials=3)
    trials = [budget.ask() for _ in range(3)]
    assert budget.remaining() == 0 and budget.ask() is None
    assert [t.number for t in trials] == [0, 1, 2]
    # Alive from the moment it is handed out, so a controller dying right away still leaves it stale-detectable.
    assert all("heartbeat" in t.user_attrs for t in study.get_trials())


def test_enqueued_trials_run_first_and_count_only_once_run(tmp_path):
    storage = make_storage(None, tmp_path)
    study = new_study(storage)
    study.enqueue_trial({"lr": 1e-4})
    budget = TrialBudget(study, storage, n_trials=2)
    assert budget.remaining() == 2  # WAITING is not spent yet
    first = budget.ask()
    assert first.suggest_float("lr", 1e-5, 1e-3) == 1e-4 and budget.remaining() == 1


def test_requeued_retries_do_not_consume_budget(tmp_path):
    storage = make_storage(None, tmp_path)
    study = new_study(storage)
    budget = TrialBudget(study, storage, n_trials=2)
    failed = budget.ask()
    failed.suggest_int("dim", 4, 64)
    failed.set_user_attr("requeued", True)  # what the controller does for a retried failure
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial(failed.params, user_attrs={"retry_of": failed.number})
    assert budget.remaining() == 2
    retry = budget.ask()
    assert retry.user_attrs["retry_of"] == failed.number and budget.remaining() == 1
    study.tell(retry, 1.0)
    assert budget.ask() is not None and budget.ask() is None
    assert len(study.trials) == 3  # two spent + the re-queued failure


def test_stale_trial_recovered_then_rerun_within_budget(tmp_path):
    storage = make_storage(None, tmp_path)
    study = new_study(storage)
    budget = TrialBudget(study, storage, n_trials=1)
    dead = budget.ask()
    study._storage.set_trial_user_attr(dead._trial_id, "heartbeat", 0.0)  # its controller died long ago
    assert budget.ask() is None
    assert recover_stale_trials(study, storage, grace_period=30) == [dead.number]
    assert study.trials[dead.number].user_attrs["fail_reason"] == STALE_REASON
    assert budget.ask().user_attrs["retry_of"] == dead.number and budget.ask() is None


# ------------------------------------------------------------------ several processes
def _hammer(url: str, sweep_dir: str, study_name: str, n_trials: int, barrier, results) -> None:
    """One controller: ask, tell COMPLETE quickly, until the budget says no."""
    import warnings

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(url, Path(sweep_dir))
    study = optuna.load_study(study_name=study_name, storage=storage)
    budget = TrialBudget(study, storage, n_trials)
    barrier.wait()
    numbers = []
    while (trial := budget.ask()) is not None:
        numbers.append(trial.number)
        study.tell(trial, float(trial.number))
        time.sleep(0.02)  # a (very) short training: lets the other controller take the lock too
    results.put(numbers)


def _url(kind: str, tmp_path: Path) -> str:
    return {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'shared.db'}",
        "journal": lambda: f"journal:///{tmp_path / 'shared.log'}",
        "postgresql": postgres_url,
        "mysql": mysql_url,
        "redis": redis_url,
    }[kind]()


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql", "mysql", "redis"])
def test_two_processes_share_one_budget(tmp_path, kind):
    url, n_trials = _url(kind, tmp_path), 16
    storage = make_storage(url, tmp_path)
    study = new_study(storage)
    try:
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        args = (url, str(tmp_path), study.study_name, n_trials, barrier, results)
        procs = [ctx.Process(target=_hammer, args=args) for _ in range(2)]
        for p in procs:
            p.start()
        # Holding the study's lock here must stop both children, whatever the storage.
        with study_lock(storage, study.study_name):
            barrier.wait(timeout=60)
            time.sleep(0.5)
            assert study.get_trials() == [], "a child asked while another process held the lock"
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        numbers = sorted(got[0] + got[1])
        assert numbers == list(range(n_trials))  # exactly n_trials, none handed out twice
        assert all(got), f"one process never got a trial: {got}"
        trials = study.get_trials()
        assert len(trials) == n_trials and all(t.state == TrialState.COMPLETE for t in trials)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage)
