"""No secret reaches a file: a sweep, a promotion and a report with three secrets planted.

The storage URL carries a password (PostgreSQL's trust auth accepts any), and
WANDB_API_KEY and HF_TOKEN are set. W&B logs offline. Every file the three
commands write is read as bytes, W&B's binary run files included, and so are
the study's attributes in the database and what the commands print.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sweeper.store.storage import make_storage
from tests.services import postgres_url
from tests.sweeps import ROOT, sweep_args

pytestmark = pytest.mark.slow
SECRETS = {
    "password": "PgPlantedPw77",
    "WANDB_API_KEY": "wk" + "0123456789abcdef" * 2 + "PLANTED",
    "HF_TOKEN": "hf_PlantedToken0123456789",
}


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def test_no_planted_secret_is_written_by_a_sweep_a_promotion_or_a_report(tiny_model_dir, tmp_path):
    url = postgres_url()  # postgresql+psycopg2://user@host:port/db
    head, _, rest = url.partition("@")
    storage = f"{head.replace('+psycopg2', '')}:{SECRETS['password']}@{rest}"
    # As from a user's shell: not attached to a W&B service an earlier test started in this process.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "_WANDB"))},
        "PYTHONPATH": str(ROOT),
        "LORA_SWEEP_CACHE": str(tmp_path / "cache"),
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": SECRETS["WANDB_API_KEY"],
        "HF_TOKEN": SECRETS["HF_TOKEN"],
    }
    study = f"secrets-{uuid.uuid4().hex[:8]}"
    overrides = [
        a for a in sweep_args(tiny_model_dir, tmp_path / "sw", logger="wandb") if a not in ("-m", "logger=none")
    ]
    overrides += [f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study}", "hydra.sweeper.n_trials=2"]
    # The workers' own URL (as to a PgBouncer in front of the database) carries the password too.
    overrides += [f"hydra.sweeper.worker_storage={storage.replace('postgresql:', 'postgresql+psycopg2:', 1)}"]
    sweep = _run(["-m", "train", "-m", *overrides], tmp_path, env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    promote = _run(["-m", "sweeper", "promote", *overrides], tmp_path, env)
    assert promote.returncode == 0, promote.stderr[-3000:]
    report = _run(["-m", "sweeper", "report", *overrides, "--out", str(tmp_path / "report.html")], tmp_path, env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert list((tmp_path / "sw").rglob("*.wandb")), sweep.stdout[-2000:]
    assert list((tmp_path / "promoted").rglob("*.wandb")), promote.stdout[-2000:] + promote.stderr[-2000:]

    leaks = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and "cache" not in path.relative_to(tmp_path).parts:
            data = path.read_bytes()
            leaks += [f"{name} in {path}" for name, secret in SECRETS.items() if secret.encode() in data]
    storage = make_storage(url, tmp_path)  # the study DB: its attributes and every trial's
    study_id = storage.get_study_id_from_name(study)
    records = [storage.get_study_user_attrs(study_id), storage.get_study_system_attrs(study_id)]
    records += [[t.params, t.user_attrs, t.system_attrs] for t in storage.get_all_trials(study_id)]
    stored = json.dumps(records, default=str)
    leaks += [f"{name} in the study DB" for name, secret in SECRETS.items() if secret in stored]
    for result in (sweep, promote, report):  # what the commands print is kept in logs and CI output too
        leaks += [f"{name} in output" for name, s in SECRETS.items() if s in result.stdout + result.stderr]
    assert not leaks, "\n".join(leaks)
