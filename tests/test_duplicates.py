"""A configuration the study already ran is answered from that trial, never trained again."""

from __future__ import annotations

import uuid

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.config import SweeperConfig
from sweeper.store.budget import TrialBudget
from sweeper.store.duplicates import find_twin, settle_duplicate
from sweeper.store.storage import make_storage
from sweeper.store.study import create_study
from sweeper.verdict import FailureRate, verdict

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def study(tmp_path):
    storage = make_storage(None, tmp_path)
    return create_study(SweeperConfig(study_name=f"t-{uuid.uuid4().hex[:8]}", direction="minimize"), storage)


def _ran(study, dim: int, state=TrialState.COMPLETE, value: float = 1.0) -> optuna.trial.FrozenTrial:
    study.enqueue_trial({"network.dim": dim})
    trial = study.ask()
    trial.suggest_categorical("network.dim", [4, 8])
    trial.report(value * 2, 1)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    elif state == TrialState.RUNNING:
        return study.trials[trial.number]
    else:
        trial.set_user_attr("prune_reason" if state == TrialState.PRUNED else "fail_reason", "why")
        study.tell(trial, state=state)
    return study.trials[trial.number]


def _draw(study, dim: int) -> optuna.Trial:
    study.enqueue_trial({"network.dim": dim})
    trial = study.ask()
    trial.suggest_categorical("network.dim", [4, 8])
    return trial


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_a_repeat_of_a_finished_trial_takes_its_outcome(study, state):
    twin = _ran(study, 4, state, value=0.25)
    _ran(study, 8)
    repeat = _draw(study, 4)
    assert find_twin(study, repeat.number, repeat.params).number == twin.number
    assert "not trained again" in settle_duplicate(study, repeat, twin)
    done = study.trials[repeat.number]
    assert done.state == state and done.values == twin.values and done.user_attrs["duplicate_of"] == twin.number
    assert done.intermediate_values == twin.intermediate_values  # pruners see the twin's curve


def test_a_repeat_of_a_running_trial_is_skipped_and_costs_no_budget(study):
    budget = TrialBudget(study, study._storage, n_trials=2)
    running = _ran(study, 4, TrialState.RUNNING)
    repeat = _draw(study, 4)
    assert budget.remaining() == 0
    assert "skipped" in settle_duplicate(study, repeat, find_twin(study, repeat.number, repeat.params))
    assert study.trials[repeat.number].state == TrialState.FAIL and budget.remaining() == 1
    assert find_twin(study, running.number, running.params) is None  # the skipped draw is nobody's twin


def test_a_requeued_failure_is_not_a_twin_of_its_retry(study):
    failed = _draw(study, 4)
    failed.set_user_attr("requeued", True)
    study.tell(failed, state=TrialState.FAIL)
    retry = _draw(study, 4)
    assert find_twin(study, retry.number, retry.params) is None


def test_failure_rate_is_judged_once_enough_trials_finished():
    rate = FailureRate(max_rate=0.5, min_judged=4)
    for state in ("FAIL", "FAIL", "COMPLETE"):
        rate.record(state, "RuntimeError: boom" if state == "FAIL" else None)
    assert not rate.exceeded() and rate.exceeded(final=True)  # 2 of 3 failed: too few to stop early, not at the end
    rate.record("FAIL", "CUDA out of memory at step 3")
    assert rate.exceeded() and rate.summary() == "2 x RuntimeError: boom; 1 x CUDA out of memory at step 3"


def test_verdict():
    ok = FailureRate(max_rate=0.5)
    ok.record("COMPLETE", None)
    assert verdict(ok, completed=1, ran=4, n_trials=4, stopped=None) is None
    assert verdict(ok, completed=1, ran=2, n_trials=4, stopped="timeout of 5 s reached") is None
    assert "the study has 2 of its 4 trials" in verdict(ok, completed=1, ran=2, n_trials=4, stopped=None)
    failing = FailureRate(max_rate=1.0)
    failing.record("FAIL", "exit")
    message = verdict(failing, completed=0, ran=1, n_trials=1, stopped=None)
    assert message.startswith("sweep failed: no trial completed") and "1 x exit" in message


def test_repeated_configurations_counts_trained_repeats_but_not_retries(study):
    from sweeper.store.duplicates import repeated_configurations

    first = _ran(study, 4)
    assert repeated_configurations(study.get_trials()) == 0
    _ran(study, 4)  # trained again without the check: the fault the tables count
    assert repeated_configurations(study.get_trials()) == 1
    failed = _draw(study, 8)
    failed.set_user_attr("requeued", True)
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial({"network.dim": 8}, user_attrs={"retry_of": failed.number})
    retry = study.ask()
    retry.suggest_categorical("network.dim", [4, 8])
    study.tell(retry, 0.5)
    reused = _draw(study, 4)
    settle_duplicate(study, reused, first)
    assert repeated_configurations(study.get_trials()) == 1  # the retry and the reused result add none
