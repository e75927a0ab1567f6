"""hydra.sweeper.backend=ray across two nodes, one removed mid-trial.

``ray start`` refuses a second node on one machine unless every server binds
all interfaces (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1), so the two nodes come
from Ray's own ``ray.cluster_utils.Cluster``: each node a raylet of its own,
all on 127.0.0.1. Trials are synthetic (named as such).
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
from optuna.trial import TrialState

from tests.ray_cluster import RAY_ENV, token_auth
from tests.services import _unavailable
from tests.sweeps import counted, load, start_sweep, synthetic_sweep_args, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(tmp_path):
    if importlib.util.find_spec("ray") is None:
        _unavailable("Ray is not installed (pip install -e '.[ray]')")
    import ray._private.ray_constants as ray_constants
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**RAY_ENV, **token_auth(tmp_path)}.items():
            patch.setenv(name, value)
        reset_auth_token_state()  # this process's Ray read its auth settings once already: read them again
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # as the env var says: loopback only
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"slot": 2}})
        try:
            second = cluster.add_node(num_cpus=1, resources={"slot": 1})
            assert {cluster.head_node.node_ip_address, second.node_ip_address} == {"127.0.0.1"}
            patch.setenv("RAY_ADDRESS", cluster.address)
            yield cluster, second
        finally:
            cluster.shutdown()
    reset_auth_token_state()


def test_actors_fill_both_nodes_and_a_node_lost_mid_trial_fails_and_requeues_its_trial(
    two_nodes, tiny_model_dir, tmp_path
):
    cluster, second = two_nodes
    sweep_dir = tmp_path / "sweep"
    args = synthetic_sweep_args(
        tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=5", "hydra.sweeper.max_retries=1",
        "hydra.sweeper.backend=ray", "hydra.sweeper.ray.resources={slot: 1}", "hydra.sweeper.ray.max_restarts=1",
        seconds=8.0, steps=8,
    )  # fmt: skip
    proc = start_sweep(args, tmp_path, tmp_path / "cache")
    try:
        all_busy = wait_for(
            lambda: sum(t.state == TrialState.RUNNING for t in load(sweep_dir).get_trials()) == 3, timeout=240
        )
        assert all_busy, "the three slots never ran trials at once"
        cluster.remove_node(second, allow_graceful=False)  # the node and its actor are gone mid-trial
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    log = out + err
    assert proc.returncode == 0, log[-3000:]
    nodes = set(re.findall(r"slot \d: actor on node (\w+)", log))
    assert len(nodes) == 2, log[-3000:]  # actors on both nodes
    study = load(sweep_dir)
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(failed) == 1 and re.fullmatch(r"Ray actor died.* at step \d", failed[0].user_attrs["fail_reason"])
    retried = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == failed[0].number]
    assert retried and retried[0].state == TrialState.COMPLETE  # re-queued, and ran again
    assert len(counted(study)) == 5
