"""hydra.sweeper.backend=ray on a local Ray cluster (127.0.0.1 only, fake slot resources).

The controller keeps the study, budget and retries; Ray actors replace the
local worker processes. Synthetic trials (named as such) measure the
machinery; one sweep trains the tiny model end to end.
"""

from __future__ import annotations

import re

import pytest
from optuna.trial import TrialState

from tests.ray_cluster import RAY_ENV, ray_cluster  # noqa: F401 (fixture)
from tests.sweeps import load, run_sweep, sweep_args

pytestmark = pytest.mark.slow
SYNTHETIC = "hydra.sweeper.synthetic_trial={seconds: 2, steps: 4}"


@pytest.fixture
def on_cluster(ray_cluster, monkeypatch):  # noqa: F811
    for name, value in {**RAY_ENV, "RAY_ADDRESS": ray_cluster.address}.items():
        monkeypatch.setenv(name, value)
    return ray_cluster


def ray_args(tiny_model_dir, sweep_dir, *extra):
    return sweep_args(
        tiny_model_dir, sweep_dir, "hydra.sweeper.backend=ray", "++hydra.sweeper.ray.resources={slot: 1}", *extra
    )


def test_an_actor_killed_mid_trial_fails_that_trial_and_the_sweep_runs_the_exact_total(
    on_cluster, tiny_model_dir, tmp_path
):
    """Synthetic trials; trial 1 SIGKILLs its own actor at step 2."""
    sweep_dir = tmp_path / "sweep"
    args = ray_args(
        tiny_model_dir,
        sweep_dir,
        SYNTHETIC,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.fault_injection=[{trial: 1, kind: exit, at_step: 2}]",
    )
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(sweep_dir).get_trials(deepcopy=False)
    assert len(trials) == 4
    states = {t.number: t.state for t in trials}
    assert states[1] == TrialState.FAIL and sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert trials[1].user_attrs["fail_reason"] == "Ray actor died at step 2"
    # The actor's slot got no trial between its death and its restart.
    log = result.stderr + result.stdout
    died = log.index("slot 1: trial 1 failed")
    restarted = log.index("slot 1: actor restarted")
    assert "started on slot 1" not in log[died:restarted]
    assert "Ray cluster" in log and "2 slots" in log


def test_a_ray_sweep_trains_the_tiny_model(on_cluster, tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(ray_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=2"), tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(sweep_dir).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert (sweep_dir / str(t.number) / "checkpoints" / "lora.safetensors").is_file()
        assert "training" in (sweep_dir / str(t.number) / "trial.log").read_text()
    assert (sweep_dir / "optimization_results.yaml").is_file()


def test_more_slots_than_the_cluster_holds_is_one_message(on_cluster, tiny_model_dir, tmp_path):
    """Synthetic trials; 5 slots of {slot: 1} on a cluster with 2: no trial starts, exit 2."""
    args = ray_args(tiny_model_dir, tmp_path / "sweep", SYNTHETIC, "hydra.sweeper.ray.max_slots=5")
    args += ["hydra.sweeper.ray.start_timeout=5"]
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(r"error: hydra\.sweeper\.ray: 3 of 5 slots found no node within 5 s", result.stderr)
    assert "Traceback" not in result.stderr
