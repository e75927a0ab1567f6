"""The slot pool: persistent spawned workers, a killed worker fails its trial and is replaced."""

from __future__ import annotations

import time

import optuna
import pytest

from sweeper.slots.pool import SlotPool, _death_reason, slot_devices
from sweeper.slots.worker import TrialJob
from tests.test_worker import FAST, NO_PRUNING


def test_slot_devices_spread_trials_over_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slot_devices([0, 2], trials_per_gpu=2, cpu_slots=4) == ["0", "2", "0", "2"]
    assert slot_devices([], trials_per_gpu=2, cpu_slots=3) == [None, None, None]
    # Indices count the GPUs this process sees.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert slot_devices([0, 2], trials_per_gpu=1, cpu_slots=1) == ["4", "6"]


def test_slot_devices_fall_back_to_cpu_slots_without_gpus(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert slot_devices(None, trials_per_gpu=1, cpu_slots=2) == [None, None]


def test_death_reason_names_the_signal_or_exit_code():
    assert _death_reason(-9, 3) == "worker killed by signal SIGKILL at step 3"
    assert _death_reason(1, 0) == "worker exited with code 1 at step 0"


def run_jobs(pool: SlotPool, jobs: list[TrialJob], timeout: float = 90.0) -> tuple[dict, dict]:
    """Feed jobs to idle slots until all are done: ({trial: outcome}, {trial: slot})."""
    pending, outcomes, slots = list(jobs), {}, {}
    deadline = time.monotonic() + timeout
    while len(outcomes) < len(jobs):
        assert time.monotonic() < deadline, f"only {sorted(outcomes)} finished"
        for slot in pool.idle_slots():
            if pending:
                job = pending.pop(0)
                slots[job.trial_number] = slot
                pool.submit(slot, job)
        for _slot, kind, payload in pool.poll(timeout=0.5):
            if kind == "done":
                outcomes[payload.trial_number] = payload
    return outcomes, slots


@pytest.fixture
def pool():
    pool = SlotPool([None, None])
    pool.start()
    yield pool
    pool.shutdown()


def test_pool_runs_trials_on_both_slots_and_replaces_a_killed_worker(pool, tmp_path, tiny_model_dir):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    cache = tmp_path / "cache"
    jobs = []
    for number in range(4):
        trial = study.ask()
        jobs.append(
            TrialJob(
                trial_number=trial.number,
                trial_id=trial._trial_id,
                study_name="s",
                storage_url=url,
                overrides=[*FAST, f"model.path={tiny_model_dir}", f"paths.cache_dir={cache}"],
                run_dir=str(tmp_path / f"trial{number}"),
                fault={"kind": "exit", "at_step": 2} if number == 1 else None,
                pruner=NO_PRUNING,
            )
        )
    pids_before = pool.pids()
    outcomes, slots = run_jobs(pool, jobs)

    killed = outcomes[1]
    assert (killed.state, killed.reason) == ("FAIL", "worker killed by signal SIGKILL at step 2")
    assert all(outcomes[n].state == "COMPLETE" and outcomes[n].values for n in (0, 2, 3))
    assert set(slots.values()) == {0, 1}
    # The dead worker was replaced, and its slot went on to complete a later trial.
    dead_slot = slots[1]
    assert pool.pids()[dead_slot] != pids_before[dead_slot]
    assert any(slots[n] == dead_slot for n in (2, 3))
    assert all(seconds > 0 for seconds in pool.busy_seconds.values())
    assert 0 < pool.utilization() <= 1
