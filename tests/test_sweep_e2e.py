"""Sweeps as users run them: `python -m train -m sweep=demo ...`, trials in persistent workers.

Each test reads the study back from its storage: that is the record the
sweeper promises to keep right through faults, kills and resumes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.store.storage import make_storage
from tests.sweeps import counted, load, run_sweep, start_sweep, sweep_args

pytestmark = pytest.mark.slow


def test_each_fault_ends_one_trial_and_the_sweep_goes_on(fault_sweep, tiny_model_dir):
    sweep_dir, result = fault_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    trials = {t.number: t for t in load(sweep_dir).get_trials()}
    assert len(trials) == 5
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == "CUDA out of memory at step 2"
    assert trials[1].state == TrialState.PRUNED and "diverged" in trials[1].user_attrs["prune_reason"]
    assert trials[2].state == TrialState.FAIL and "SIGKILL" in trials[2].user_attrs["fail_reason"]
    assert trials[3].state == trials[4].state == TrialState.COMPLETE  # the killed worker was replaced
    resolved = (sweep_dir / "3" / "config.yaml").read_text()
    assert "group: demo" in resolved and str(tiny_model_dir) in resolved  # per-trial resolved config
    assert "trial 0 FAIL: CUDA out of memory at step 2" in (sweep_dir / "0" / "trial.log").read_text()
    assert "evaluation at step" in (sweep_dir / "3" / "trial.log").read_text()
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_params" in results and "best_value" in results
    assert "best trial" in result.stderr


def test_a_failed_configuration_is_retried(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.max_retries=1",
        "hydra.sweeper.fault_injection=[{trial:0,kind:error,at_step:1}]",
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    first = study.trials[0]
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert first.state == TrialState.FAIL and first.user_attrs.get("requeued")
    assert len(retries) == 1 and retries[0].params == first.params and retries[0].state == TrialState.COMPLETE
    assert len(counted(study)) == 2  # the retry replaces the failure in the budget


def test_killed_controller_loses_nothing_and_the_same_command_resumes(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
    )
    proc = start_sweep(args, tmp_path, tmp_path / "cache")
    deadline = time.time() + 300
    finished_before = []
    while time.time() < deadline:
        time.sleep(1)
        if (sweep_dir / "optuna.db").exists():
            try:
                trials = load(sweep_dir).get_trials()
            except KeyError:  # the database exists before the study does
                continue
            finished_before = [t for t in trials if t.state.is_finished()]
            if len(finished_before) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
                break
    os.killpg(proc.pid, signal.SIGKILL)  # the controller and its workers die at once, like a lost host
    proc.communicate()
    assert len(finished_before) >= 2
    time.sleep(4)  # past the grace period: the RUNNING trials are now stale

    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    after = {t.number: t for t in study.get_trials()}
    for t in finished_before:  # nothing finished was lost or changed
        assert after[t.number].state == t.state and after[t.number].values == t.values
    stale = [t for t in after.values() if t.user_attrs.get("fail_reason", "").startswith("stale")]
    assert stale and all(t.user_attrs.get("requeued") for t in stale)
    assert not any(t.state == TrialState.RUNNING for t in after.values())
    assert len(counted(study)) == 6  # the total holds exactly


def test_two_controllers_share_one_postgresql_study(tiny_model_dir, tmp_path):
    from sqlalchemy.engine import make_url

    from tests.services import postgres_url

    # The README's form: a bare postgresql:// URL, whichever driver is installed (controller and workers alike).
    url = make_url(postgres_url()).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"two-hosts-{uuid.uuid4().hex[:8]}"
    procs = [
        start_sweep(
            sweep_args(
                tiny_model_dir,
                tmp_path / f"host{i}",
                f"hydra.sweeper.storage={url}",
                f"hydra.sweeper.study_name={name}",
                "hydra.sweeper.n_trials=5",
                "hydra.sweeper.cpu_slots=1",
            ),
            tmp_path,
            tmp_path / "cache",
            # Two hosts share one machine here: each gets its own core, as a host would, instead of
            # both slots' torch threads fighting over the same two (which slows every step ~10x).
            cpus={i % len(os.sched_getaffinity(0))},
        )
        for i in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    storage = make_storage(url, tmp_path)
    study = optuna.load_study(study_name=name, storage=storage)
    try:
        trials = study.get_trials()
        assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
        run_dirs = [t.user_attrs["run_dir"] for t in trials]
        assert len(set(run_dirs)) == 5  # no trial ran twice
        hosts = {Path(d).parent.name for d in run_dirs}
        assert hosts == {"host0", "host1"}  # both controllers took trials
        assert not any("storage" in o for t in trials for o in t.user_attrs["overrides"])  # hydra.* stays out
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_bad_search_space_stops_before_any_trial(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(
        sweep_args(tiny_model_dir, sweep_dir, "network.dim=interval(8,4)"),
        tmp_path,
        tmp_path / "cache",
    )
    assert result.returncode == 2
    assert "hydra.sweeper.params.network.dim" in result.stderr and "Traceback" not in result.stderr
    assert not (sweep_dir / "0").exists()


def test_multi_objective_study_runs_enqueued_config_first(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(
        sweep_args(
            tiny_model_dir,
            sweep_dir,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.direction=[minimize,maximize]",
            "hydra.sweeper.objectives=[val_loss,clip_t]",
            "hydra.sweeper.sampler._target_=optuna.samplers.NSGAIISampler",
            "hydra.sweeper.enqueue=[{optimizer.learning_rate:0.001,network.dim:4,_alpha_ratio:1.0}]",
        ),
        tmp_path,
        tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    assert len(study.directions) == 2 and len(study.trials) == 3
    assert study.trials[0].params == {"optimizer.learning_rate": 0.001, "network.dim": 4, "_alpha_ratio": 1.0}
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    assert "solutions:" in (sweep_dir / "optimization_results.yaml").read_text()
    assert "Pareto front" in result.stderr


@pytest.mark.parametrize(
    ("limit", "message"),
    [("hydra.sweeper.timeout=1", "timeout of 1 s reached"), ("hydra.sweeper.gpu_hours=0.0005", "GPU-hours spent")],
    ids=["timeout", "gpu-hours"],
)
def test_time_budgets_stop_new_trials_and_finish_running_ones(tiny_model_dir, tmp_path, limit, message):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(
        sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=20", limit), tmp_path, tmp_path / "cache"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert message in result.stdout + result.stderr
    trials = load(sweep_dir).get_trials()
    assert 1 <= len(trials) < 20  # stopped early
    assert all(t.state.is_finished() for t in trials)  # the running ones were let finish
