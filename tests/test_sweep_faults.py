"""The sweep machinery under the faults users meet: kills, resumes, several controllers, failing trials.

Trials here are synthetic (``hydra.sweeper.synthetic_trial``: they sleep and
report instead of training), so each sweep takes seconds; the controller,
budget, storage, workers, heartbeats and recovery are the real ones, driven
through ``python -m train -m`` as users run it.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.sweeps import (
    assert_resumed_exactly,
    counted,
    load,
    repeated_configurations,
    run_sweep,
    start_sweep,
    synthetic_sweep_args,
    trained,
    wait_for,
)

pytestmark = pytest.mark.slow


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the controller and its workers at once, like a lost host
    proc.communicate()


def _stale(trial) -> bool:
    return trial.user_attrs.get("fail_reason", "").startswith("stale")


def test_resume_right_after_a_kill_runs_the_exact_total(tiny_model_dir, tmp_path):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    args = synthetic_sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=8", seconds=2.0, steps=4)

    # 1. Killed right after a trial's tell, while the other slot's trial runs.
    proc = start_sweep(args, tmp_path, cache)
    killed = wait_for(
        lambda: any(t.state == TrialState.COMPLETE for t in load(sweep_dir).get_trials())
        and any(t.state == TrialState.RUNNING for t in load(sweep_dir).get_trials())
    )
    _kill(proc)
    assert killed, "no trial finished while another ran"
    finished = {t.number: t for t in load(sweep_dir).get_trials() if t.state.is_finished()}

    # 2. Resumed at once, before the dead trials are stale; killed again right after it recovers them.
    proc = start_sweep(args, tmp_path, cache)
    recovered = wait_for(lambda: any(_stale(t) for t in load(sweep_dir).get_trials()), timeout=120)
    _kill(proc)
    assert recovered, "the resumed controller never recovered the dead controller's RUNNING trials"

    # 3. Resumed at once again: it must finish the study exactly.
    result = run_sweep(args, tmp_path, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = assert_resumed_exactly(sweep_dir, finished, total=8)
    stale = [t for t in trials.values() if _stale(t)]
    retried = {t.user_attrs.get("retry_of") for t in trials.values()}
    assert stale and all(t.number in retried for t in stale)  # every recovered trial ran again


def test_a_resume_draws_configurations_the_study_has_not_run(tiny_model_dir, tmp_path):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    first = run_sweep(synthetic_sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=4"), tmp_path, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_sweep(synthetic_sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=8"), tmp_path, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(sweep_dir)
    assert len(counted(study)) == 8 and all(t.state == TrialState.COMPLETE for t in study.get_trials())
    assert len({repr(sorted(t.params.items())) for t in study.get_trials()}) == 8


def test_two_controllers_started_together_on_a_fresh_sqlite_file(tiny_model_dir, tmp_path):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    args = synthetic_sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=8", "hydra.sweeper.cpu_slots=1")
    procs = [start_sweep(args, tmp_path, cache) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    study = load(sweep_dir)
    assert len(counted(study)) == 8 and not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert repeated_configurations(study) == 0
    assert len({repr(sorted(t.params.items())) for t in trained(study)}) == len(trained(study))


def test_a_configuration_the_study_already_ran_is_not_trained_again(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # Two configurations in all (dim 2 or 4), five trials: three must reuse a result instead of training.
    args = synthetic_sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.cpu_slots=1",
        "network.dim=choice(2,4)",
        "optimizer.learning_rate=choice(0.001)",
        "_alpha_ratio=choice(1.0)",
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir)
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    ran = trained(study)
    assert sorted(t.params["network.dim"] for t in ran) == [2, 4]
    for trial in trials:
        if trial not in ran:
            twin = study.trials[trial.user_attrs["duplicate_of"]]
            assert twin.params == trial.params and twin.values == trial.values
            assert not (sweep_dir / str(trial.number)).exists()  # nothing was trained for it
    assert "same configuration as trial" in result.stdout + result.stderr


def test_a_grid_study_stops_when_the_grid_is_exhausted(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = "{network.dim:[2,4],_alpha_ratio:[0.5,1.0],optimizer.learning_rate:[0.001]}"
    args = synthetic_sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
        f"++hydra.sweeper.sampler.search_space={grid}",
        "optimizer.learning_rate=choice(0.001)",
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(sweep_dir).get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({repr(sorted(t.params.items())) for t in trials}) == 4
    assert "grid exhausted" in result.stdout + result.stderr and "4 points" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.max_train_stepz=choice(5,6)", "train.max_train_stepz=5"),
        ("network.dim=choice(4,0)", "network.dim=0"),
        ("optimizer.learning_rate=interval(-1.0,0.1)", "optimizer.learning_rate=-1"),
    ],
    ids=["typo-key", "impossible-choice", "impossible-interval-end"],
)
def test_searched_keys_and_values_are_checked_before_any_trial(tiny_model_dir, tmp_path, override, named):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(synthetic_sweep_args(tiny_model_dir, sweep_dir, override), tmp_path, tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (sweep_dir / "0").exists()


def _errors_in_trials(n: int) -> str:
    """hydra.sweeper.fault_injection making trials 0..n-1 raise at their first step."""
    return "hydra.sweeper.fault_injection=[" + ",".join(f"{{trial:{i},kind:error,at_step:1}}" for i in range(n)) + "]"


def test_a_sweep_whose_trials_all_fail_exits_non_zero(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = synthetic_sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.max_failure_rate=1.0",  # the rate never stops it: no completed trial must, on its own
        _errors_in_trials(3),
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no trial completed" in result.stderr and "3 x RuntimeError: injected error" in result.stderr
    assert "Traceback" not in result.stderr


def test_past_max_failure_rate_the_sweep_stops_asking_and_exits_non_zero(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = synthetic_sweep_args(
        tiny_model_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=12",
        "hydra.sweeper.cpu_slots=1",
        "hydra.sweeper.max_failure_rate=0.5",
        _errors_in_trials(6),
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 1, result.stderr[-3000:]
    trials = load(sweep_dir).get_trials()
    assert len(trials) == 4  # judged once 4 trials finished: 4 of 4 failed, past 0.5
    assert all(t.state == TrialState.FAIL for t in trials)
    assert "max_failure_rate" in result.stderr and "4 x RuntimeError: injected error" in result.stderr


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_workers_die_with_a_killed_controller(tiny_model_dir, tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    marker = f"SWEEP_TEST_RUN={uuid.uuid4().hex}"
    monkeypatch.setenv(*marker.split("="))  # inherited by the controller and its workers
    # One step of 60 s: a worker mid-step never reaches the progress call that would notice its parent gone.
    args = synthetic_sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=2", seconds=60.0, steps=1)
    proc = start_sweep(args, tmp_path, tmp_path / "cache")
    try:
        # Both workers are inside their trial (each wrote its trial.log), not still starting up.
        assert wait_for(lambda: all((sweep_dir / n / "trial.log").exists() for n in ("0", "1")), timeout=120)
        os.kill(proc.pid, signal.SIGKILL)  # the controller alone, as the OOM killer would
        proc.wait()  # not communicate(): the workers hold the same output pipes
        assert wait_for(lambda: not _processes_with(marker), timeout=10), "workers outlived their controller"
    finally:
        for pid in _processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        proc.communicate()
