"""Workers through Optuna's gRPC storage proxy (``hydra.sweeper.worker_storage=grpc://host:port``).

At hundreds of workers each opening its own database connection, PostgreSQL's
connection limit bites; the controller stays on the direct URL (its locks and
heartbeats need the database) while the workers go through one proxy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from sweeper.config import SweeperConfig
from sweeper.store.storage import make_storage
from sweeper.store.study import create_study
from train.errors import ConfigError

pytest.importorskip("grpc", reason="grpcio is not installed (pip install grpcio protobuf)")

from sweeper.store.proxy import check_worker_storage, start_storage_proxy  # noqa: E402
from tests.services import free_port, postgres_url  # noqa: E402
from tests.sweeps import ROOT, load, run_sweep, synthetic_sweep_args, wait_for  # noqa: E402


@pytest.fixture
def sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    name = f"t-{uuid.uuid4().hex[:8]}"
    study = create_study(SweeperConfig(study_name=name, direction="maximize"), make_storage(url, tmp_path))
    return url, study


def test_a_worker_reports_through_the_proxy_to_the_controllers_study(tmp_path, sqlite_study):
    from sweeper.slots.worker import TrialJob, open_study

    url, study = sqlite_study
    port = free_port()
    server = start_storage_proxy(url, "127.0.0.1", port)
    try:
        trial = study.ask()
        job = TrialJob(trial.number, trial._trial_id, study.study_name, f"grpc://127.0.0.1:{port}", [], str(tmp_path))
        optuna.trial.Trial(open_study(job), trial._trial_id).report(0.25, step=3)
        assert study.trials[0].intermediate_values == {3: 0.25}
        check_worker_storage(make_storage(url, tmp_path), study.study_name, f"grpc://127.0.0.1:{port}")  # the same study
    finally:
        server.stop(grace=None)


def test_a_proxy_that_serves_another_database_is_named(tmp_path, sqlite_study):
    url, study = sqlite_study
    other = tmp_path / "other"
    other.mkdir()
    other_url = f"sqlite:///{other / 'optuna.db'}"
    # The same study name in another database: only the probe tells them apart.
    create_study(SweeperConfig(study_name=study.study_name, direction="maximize"), make_storage(other_url, other))
    port = free_port()
    server = start_storage_proxy(other_url, "127.0.0.1", port)
    try:
        with pytest.raises(ConfigError) as err:
            check_worker_storage(make_storage(url, tmp_path), study.study_name, f"grpc://127.0.0.1:{port}")
        message = str(err.value)
        assert message.startswith("hydra.sweeper.worker_storage: ")
        assert f"grpc://127.0.0.1:{port}" in message and "another database" in message
    finally:
        server.stop(grace=None)


def test_no_proxy_listening_is_one_message_naming_the_key(tmp_path, monkeypatch):
    import sweeper.store.storage as storage_module

    monkeypatch.setattr(storage_module, "CONNECT_TIMEOUT_S", 1)
    port = free_port()
    with pytest.raises(ConfigError) as err:
        make_storage(f"grpc://127.0.0.1:{port}", tmp_path, key="hydra.sweeper.worker_storage")
    message = str(err.value)
    assert message.startswith("hydra.sweeper.worker_storage: cannot reach the gRPC storage proxy")
    assert "python -m sweeper storage-proxy" in message


def test_the_controller_needs_the_database_itself():
    with pytest.raises(ConfigError) as err:
        SweeperConfig(storage="grpc://127.0.0.1:13000")
    message = str(err.value)
    assert message.startswith("hydra.sweeper.storage: ") and "hydra.sweeper.worker_storage" in message


def test_the_proxy_serves_no_journal(tmp_path):
    with pytest.raises(ConfigError) as err:
        start_storage_proxy(f"journal:///{tmp_path / 'study.log'}", "127.0.0.1", free_port())
    assert "journal" in str(err.value) and "hydra.sweeper.storage" in str(err.value)


def _serve(url: str, port: int, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["storage-proxy", f"hydra.sweeper.storage={url}", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_sweep_on_postgresql_with_its_workers_through_the_proxy(tiny_model_dir, tmp_path):
    """The README's plan at scale, on one machine: controller on the direct URL, workers through the proxy.

    The URL as users write it, a bare postgresql://, for the proxy and the controller alike."""
    url = make_url(postgres_url()).set(drivername="postgresql").render_as_string(hide_password=False)
    port = free_port()
    proxy = _serve(url, port, tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proxy.stdout), daemon=True)
    reader.start()
    name = f"proxy-{uuid.uuid4().hex[:8]}"
    sweep_dir = tmp_path / "sweep"
    try:
        assert wait_for(lambda: any("serving" in line for line in lines), timeout=120), "".join(lines)
        args = synthetic_sweep_args(
            tiny_model_dir,
            sweep_dir,
            "hydra.sweeper.n_trials=4",
            f"hydra.sweeper.study_name={name}",
            f"hydra.sweeper.storage={url}",
            f"hydra.sweeper.worker_storage=grpc://127.0.0.1:{port}",
        )
        result = run_sweep(args, tmp_path, tmp_path / "cache")
        assert result.returncode == 0, result.stderr[-3000:]
        study = load(sweep_dir, name, url)
        trials = study.get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        assert all(t.intermediate_values for t in trials)  # reported by the workers, through the proxy
        trial_log = (sweep_dir / "0" / "trial.log").read_text()
        assert f"through grpc://127.0.0.1:{port}" in trial_log
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy.wait(timeout=60)
        reader.join(timeout=10)
        optuna.delete_study(study_name=name, storage=make_storage(url, tmp_path))
    output = "".join(lines)
    assert proxy.returncode == 0 and "Traceback" not in output, output
    assert f"hydra.sweeper.worker_storage=grpc://127.0.0.1:{port}" in output  # tells the user what to set


def test_a_taken_port_is_one_message(tmp_path, sqlite_study):
    url, _ = sqlite_study
    port = free_port()
    server = start_storage_proxy(url, "127.0.0.1", port)
    try:
        with pytest.raises(ConfigError, match=f"--port: cannot listen on 127.0.0.1:{port}"):
            start_storage_proxy(url, "127.0.0.1", port)
    finally:
        server.stop(grace=None)
