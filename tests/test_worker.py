"""One sweep trial in-process on the tiny model: values and reports in the storage, faults, pruning, memory."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest

from sweeper.slots import worker
from sweeper.slots.reporting import OptunaReporter
from sweeper.slots.worker import TrialJob, run_trial

FAST = [
    "train.max_train_steps=4",
    "train.save_every_n_steps=null",
    "evaluate.num_inference_steps=2",
    "evaluate.seeds=[0]",
    "evaluate.every_n_steps=2",
    "logger=none",
]
NO_PRUNING = {"_target_": "optuna.pruners.NopPruner"}


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory):
    """One cache (latents, text embeddings, demo CLIP) for every trial of the session."""
    return tmp_path_factory.mktemp("sweep-cache")


@pytest.fixture
def study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return optuna.create_study(study_name="s", storage=url, direction="maximize")


@pytest.fixture
def make_job(study, tmp_path, tiny_model_dir, sweep_cache):
    """A TrialJob for a new trial of ``study``, as the controller builds it."""

    def _make(*overrides: str, fault=None, pruner=NO_PRUNING, metric="objective") -> TrialJob:
        trial = study.ask()
        return TrialJob(
            trial_number=trial.number,
            trial_id=trial._trial_id,
            study_name=study.study_name,
            storage_url=f"sqlite:///{tmp_path / 'study.db'}",
            overrides=[*FAST, f"model.path={tiny_model_dir}", f"paths.cache_dir={sweep_cache}", *overrides],
            run_dir=str(tmp_path / f"trial{trial.number}"),
            report_metric=metric,
            fault=fault,
            pruner=pruner,
        )

    return _make


def test_trial_completes_with_best_value_and_reports_in_storage(study, make_job):
    base_models: dict = {}
    first = run_trial(make_job(), base_models)
    assert first.state == "COMPLETE", first.reason
    assert first.step == 4 and first.reason is None
    reported = study.trials[0].intermediate_values
    assert sorted(reported) == [2, 4]
    assert first.values == [max(reported.values())]
    # The second trial trains a fresh copy: the kept base model was not changed by the first.
    second = run_trial(make_job(), base_models)
    assert second.values == first.values


@pytest.mark.parametrize(
    ("kind", "at_step", "state", "reason"),
    [
        ("oom", 2, "FAIL", "CUDA out of memory at step 2"),
        ("nan", 1, "PRUNED", "diverged: loss is nan at step 2"),
        ("error", 1, "FAIL", "RuntimeError: injected error"),
    ],
)
def test_injected_faults_end_the_trial_with_their_reason(make_job, kind, at_step, state, reason):
    outcome = run_trial(make_job(fault={"kind": kind, "at_step": at_step}), {})
    assert (outcome.state, outcome.reason, outcome.values) == (state, reason, None)


def test_pruner_stops_the_trial_at_its_first_report(study, make_job):
    outcome = run_trial(make_job(pruner={"_target_": "tests.test_worker.AlwaysPrune"}), {})
    assert outcome.state == "PRUNED"
    assert outcome.reason.startswith("pruned at step 2")
    assert list(study.trials[0].intermediate_values) == [2]


def test_user_errors_and_missing_evaluation_fail_without_training(make_job):
    no_eval = run_trial(make_job("evaluate=none"), {})
    assert (no_eval.state, no_eval.reason, no_eval.step) == ("FAIL", "no evaluation configured", 0)
    bad = run_trial(make_job("train.max_train_steps=-1"), {})
    assert bad.state == "FAIL" and "max_train_steps" in bad.reason


def test_reporter_reports_the_chosen_metric_and_skips_what_optuna_cannot_take(study):
    result = SimpleNamespace(step=3, value=0.5, scores={"val_loss": 0.25})
    trial = study.ask()
    OptunaReporter(study, trial._trial_id, "val_loss").report(result)
    OptunaReporter(study, trial._trial_id).report(SimpleNamespace(step=4, value=math.nan, scores={}))
    assert study.trials[0].intermediate_values == {3: 0.25}
    multi = optuna.create_study(directions=["maximize", "minimize"])
    reporter = OptunaReporter(multi, multi.ask()._trial_id)
    reporter.report(result)  # Optuna cannot prune multi-objective studies: nothing is reported
    assert not reporter.should_prune()


def test_base_model_is_loaded_once_per_model_config(monkeypatch):
    from train.config import ModelConfig

    loads = []
    monkeypatch.setattr("train.models.loading.load_base_model", lambda cfg: loads.append(cfg) or object())
    base_models: dict = {}
    first = worker.base_model_for(ModelConfig(path="/m/tiny"), base_models)
    assert worker.base_model_for(ModelConfig(path="/m/tiny"), base_models) is first
    worker.base_model_for(ModelConfig(path="/m/tiny", prediction_type="v_prediction"), base_models)
    assert len(loads) == 2 and len(base_models) == 1  # a different model replaces the kept one


def test_memory_does_not_grow_over_twenty_trials(make_job, monkeypatch):
    import train.models.loading as loading

    loads = []
    real_load = loading.load_base_model
    monkeypatch.setattr(loading, "load_base_model", lambda cfg: loads.append(1) or real_load(cfg))
    monkeypatch.setattr("train.recipe.load_base_model", None)  # the recipe must use the kept base
    base_models: dict = {}
    rss = []
    # Short trials with the smallest evaluation that still gives a value.
    short = ["train.max_train_steps=2", "evaluate.every_n_steps=null", "evaluate.baseline=false"]
    short += ["evaluate.prompts=[red circle]", "evaluate.validation.enabled=false"]
    for _ in range(20):
        outcome = run_trial(make_job(*short), base_models)
        assert outcome.state == "COMPLETE", outcome.reason
        rss.append(outcome.rss_mb)
    print(f"rss after trial 5: {rss[4]:.1f} MB, after trial 20: {rss[19]:.1f} MB, growth {rss[19] - rss[4]:.1f} MB")
    assert rss[19] - rss[4] < 50
    assert len(loads) == 1
