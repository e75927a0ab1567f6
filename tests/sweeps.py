"""Running sweeps from tests as users do: `python -m train -m sweep=demo ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def sweep_args(tiny_model_dir: Path, sweep_dir: Path, *extra: str, logger: str = "none") -> list[str]:
    return [
        "-m",
        "sweep=demo",
        f"model.path={tiny_model_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        "train.max_train_steps=6",
        "evaluate.every_n_steps=3",
        "evaluate.num_inference_steps=2",
        f"logger={logger}",
        *extra,
    ]


def start_sweep(args: list[str], cwd: Path, cache: Path, cpus: set[int] | None = None) -> subprocess.Popen:
    """Start a sweep; ``cpus`` pins it (controller and workers) to those cores, like a host of its own."""
    env = {**os.environ, "LORA_SWEEP_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )


def run_sweep(args: list[str], cwd: Path, cache: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    proc = start_sweep(args, cwd, cache)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def load(sweep_dir: Path, study_name: str = "demo", storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=storage or f"sqlite:///{sweep_dir / 'optuna.db'}")


def counted(study: optuna.Study) -> list:
    """Trials that count toward n_trials: all but failed ones that were re-queued."""
    return [t for t in study.get_trials() if not (t.state == TrialState.FAIL and t.user_attrs.get("requeued"))]
