"""A local Ray cluster for the Ray backend's tests, bound to 127.0.0.1 only.

``ray start`` resolves 127.0.0.1 to the machine's outward address unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (then every Ray server binds loopback);
usage stats are off and there is no dashboard, so nothing prompts or phones
out. Slots are a fake ``slot`` resource. The raylet sometimes fails to start
on a loaded 2-core machine (ray-project/ray#65983): start-up is retried once,
and the test output says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.services import _unavailable

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DEDUP_LOGS": "0"}
START_TIMEOUT = 180


def token_auth(temp_dir: Path) -> dict[str, str]:
    """Ray's token authentication with a token of the test's own: the cluster and every driver use it.

    Set explicitly, so a ~/.ray/auth_token on the machine (which a local ``ray.init()`` writes, and which
    turns token auth on for a later ``ray start``) changes nothing here.
    """
    token = temp_dir / "auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _start(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([ray_cli(), "start", *args], env=env, capture_output=True, text=True, timeout=START_TIMEOUT)


class LocalRayCluster:
    def __init__(self, temp_dir: Path):
        self.temp_dir, self.address = temp_dir, None
        self.ray_env = {**RAY_ENV, **token_auth(temp_dir)}  # what a driver of this cluster needs
        self.env = {**os.environ, **self.ray_env}

    def start_head(self, slots: int) -> None:
        args = [
            "--head", "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=2", "--num-gpus=0",
            f"--resources={json.dumps({'slot': slots})}", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ]  # fmt: skip
        self._start_with_retry(args, "head")
        self.address = (self.temp_dir / "ray_current_cluster").read_text().strip()  # ray start writes it there
        self.ray_env["RAY_ADDRESS"] = self.env["RAY_ADDRESS"] = self.address

    def add_node(self, slots: int) -> None:
        """A second raylet on this machine with its own fake slots (the same temp dir, another node)."""
        args = [
            f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
            f"--resources={json.dumps({'slot': slots, 'second_node': 1})}", "--disable-usage-stats",
        ]  # fmt: skip
        self._start_with_retry(args, "second node")

    def _start_with_retry(self, args: list[str], what: str) -> subprocess.CompletedProcess:
        result = _start(args, self.env)
        if result.returncode != 0:
            # ray-project/ray#65983: the raylet may fail to come up under load; once more, and say so.
            print(f"ray start ({what}) failed once, retrying:\n{result.stderr[-1500:]}", file=sys.stderr)
            result = _start(args, self.env)
        if result.returncode != 0:
            raise RuntimeError(f"ray start ({what}) failed twice:\n{result.stderr[-3000:]}")
        return result

    def stop(self) -> None:
        subprocess.run([ray_cli(), "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node with two fake slots, for one test module."""
    if importlib.util.find_spec("ray") is None:
        _unavailable("Ray is not installed (pip install -e '.[ray]')")
    # Short: Ray puts unix sockets under it (a path of at most 107 bytes).
    cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")))
    try:
        cluster.start_head(slots=2)
        yield cluster
    finally:
        cluster.stop()
