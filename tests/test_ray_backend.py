"""hydra.sweeper.backend=ray on a local Ray cluster (127.0.0.1 only, fake slot resources).

The controller keeps the study, budget and retries; Ray actors replace the
local worker processes. Synthetic trials (named as such) measure the
machinery; one sweep trains the tiny model end to end.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.ray_cluster import ray_cluster  # noqa: F401 (fixture)
from tests.services import free_port
from tests.sweeps import (
    assert_resumed_exactly,
    load,
    run_sweep,
    start_sweep,
    sweep_args,
    synthetic_sweep_args,
    wait_for,
)

pytestmark = pytest.mark.slow
SYNTHETIC = "hydra.sweeper.synthetic_trial={seconds: 2, steps: 4}"


@pytest.fixture
def on_cluster(ray_cluster, monkeypatch):  # noqa: F811
    for name, value in ray_cluster.ray_env.items():
        monkeypatch.setenv(name, value)
    return ray_cluster


def ray_args(tiny_model_dir, sweep_dir, *extra):
    return sweep_args(
        tiny_model_dir, sweep_dir, "hydra.sweeper.backend=ray", "hydra.sweeper.ray.resources={slot: 1}", *extra
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


def test_ray_actors_reach_the_study_through_the_grpc_storage_proxy(on_cluster, tiny_model_dir, tmp_path):
    """Synthetic trials; the controller on the SQLite file, the actors through a proxy serving that file."""
    from sweeper.store.proxy import start_storage_proxy

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    url, port = f"sqlite:///{sweep_dir / 'optuna.db'}", free_port()
    server = start_storage_proxy(url, "127.0.0.1", port)
    try:
        args = ray_args(
            tiny_model_dir,
            sweep_dir,
            SYNTHETIC,
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={url}",
            f"hydra.sweeper.worker_storage=grpc://127.0.0.1:{port}",
        )
        result = run_sweep(args, tmp_path, tmp_path / "cache")
    finally:
        server.stop(grace=None)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(sweep_dir).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert t.intermediate_values  # reported by the actor, through the proxy
        assert f"through grpc://127.0.0.1:{port}" in (sweep_dir / str(t.number) / "trial.log").read_text()


def test_a_driver_without_the_clusters_token_is_told_what_to_set(on_cluster, tiny_model_dir, tmp_path, monkeypatch):
    """Synthetic trials; the cluster uses token auth, this driver has no RAY_AUTH_MODE (Ray never sends a
    token to an explicit address unasked): one message naming the settings, exit 2, no trial."""
    monkeypatch.delenv("RAY_AUTH_MODE")
    # Ray retries a refused connection 20 times, 1 s apart, before it raises; the message is what is tested.
    monkeypatch.setenv("RAY_NUM_REDIS_GET_RETRIES", "2")
    result = run_sweep(ray_args(tiny_model_dir, tmp_path / "sweep", SYNTHETIC), tmp_path, tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: hydra.sweeper.ray.address: cannot join"), errors
    assert "RAY_AUTH_MODE=token" in errors[0] and "Traceback" not in result.stderr


def test_only_an_authentication_refusal_gets_the_token_hint():
    from sweeper.slots.ray_pool import _auth_hint

    try:  # as ray.init raises it: its ConnectionError from the node's, which names the refusal
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1") from RuntimeError(
            "Failed to start GCS. ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken"
        )
    except ConnectionError as err:
        refused = err
    assert "RAY_AUTH_MODE=token" in _auth_hint(refused)
    assert _auth_hint(ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1")) == ""


def test_more_slots_than_the_cluster_holds_is_one_message(on_cluster, tiny_model_dir, tmp_path):
    """Synthetic trials; 5 slots of {slot: 1} on a cluster with 2: no trial starts, exit 2."""
    args = ray_args(tiny_model_dir, tmp_path / "sweep", SYNTHETIC, "hydra.sweeper.ray.max_slots=5")
    args += ["hydra.sweeper.ray.start_timeout=5"]
    result = run_sweep(args, tmp_path, tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(r"error: hydra\.sweeper\.ray: 3 of 5 slots found no node within 5 s", result.stderr)
    assert "Traceback" not in result.stderr


def _trial_actors() -> list[int]:
    """Pids of live TrialActor processes on this machine (Ray titles each worker ``ray::TrialActor...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::TrialActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_driver_takes_its_actors_and_the_same_command_resumes(on_cluster, tiny_model_dir, tmp_path):
    """Synthetic trials; the driver is SIGKILLed while one trial finished and another runs."""
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    args = synthetic_sweep_args(
        tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=5", "hydra.sweeper.backend=ray",
        "hydra.sweeper.ray.resources={slot: 1}", seconds=2.0, steps=4,
    )  # fmt: skip
    proc = start_sweep(args, tmp_path, cache)
    killed = wait_for(
        lambda: any(t.state == TrialState.COMPLETE for t in load(sweep_dir).get_trials())
        and any(t.state == TrialState.RUNNING for t in load(sweep_dir).get_trials())
    )
    actors = _trial_actors()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert killed, "no trial finished while another ran"
    assert len(actors) >= 2, "the sweep's actors were not found as ray::TrialActor processes"
    assert wait_for(lambda: not _trial_actors(), timeout=60), "the dead driver's actors kept running"
    finished = {t.number: t for t in load(sweep_dir).get_trials() if t.state.is_finished()}

    result = run_sweep(args, tmp_path, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_resumed_exactly(sweep_dir, finished, total=5)


class _StandInCall:
    """Stands for an actor method: ``.remote(...)`` returns the value itself (ray.get is the identity here)."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


def test_a_node_that_cannot_see_the_sweep_dir_is_named(tmp_path, monkeypatch):
    """The marker check with stand-in actors: one reads the controller's marker, one (another node) cannot.

    On one machine every real actor sees the same files, so the blind node is a stand-in."""
    import ray

    from sweeper.slots import ray_pool
    from train.errors import ConfigError

    def actor(blind: bool):
        class StandInActor:
            sees = _StandInCall(lambda path, token: not blind and Path(path).read_text() == token)
            exists = _StandInCall(lambda path: not blind and Path(path).exists())

        return StandInActor()

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    sweep_dir = tmp_path / "sweep"
    pool = ray_pool.RayPool(settings=None, slots=2, shared_paths={"hydra.sweep.dir": sweep_dir})
    pool._slots = [
        ray_pool._RaySlot(actor(blind=False), where={"node": "a" * 40}),
        ray_pool._RaySlot(actor(blind=True), where={"node": "b" * 40}),
    ]
    message = rf"^hydra\.sweep\.dir: {re.escape(str(sweep_dir))} is not visible from Ray node\(s\) {'b' * 12}; put it"
    with pytest.raises(ConfigError, match=message):
        pool._check_shared_paths()
    assert not list(sweep_dir.glob(".shared-check-*"))  # the marker is removed either way
    pool._slots[1] = ray_pool._RaySlot(actor(blind=False), where={"node": "b" * 40})
    pool._check_shared_paths()  # every node sees it: no error
    # A model is only looked for, never written into.
    model = tmp_path / "model"
    model.mkdir()
    pool.shared_paths = {"model.path": model}
    pool._slots[0] = ray_pool._RaySlot(actor(blind=True), where={"node": "c" * 40})
    with pytest.raises(ConfigError, match=rf"^model\.path: {re.escape(str(model))} is not visible from Ray node\(s\) {'c' * 12}"):
        pool._check_shared_paths()
    assert list(model.iterdir()) == []
