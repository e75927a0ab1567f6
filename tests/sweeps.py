"""Running sweeps from tests as users do: `python -m train -m sweep=demo ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from train.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def sweep_args(tiny_model_dir: Path, sweep_dir: Path, *extra: str, logger: str = "none") -> list[str]:
    from tests.conftest import on_fast_stack

    return on_fast_stack([
        "-m",
        "sweep=demo",
        f"model.path={tiny_model_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        "train.max_train_steps=6",
        "evaluate.every_n_steps=3",
        "evaluate.num_inference_steps=2",
        f"logger={logger}",
        # The machinery's checks read the validation loss, which falls on the tiny model (its CLIP is random).
        "hydra.sweeper.direction=minimize",
        "hydra.sweeper.report=val_loss",
        "evaluate.objective.metrics.clip_t=0.0",
        "++evaluate.objective.metrics.val_loss=1.0",
        "evaluate.objective.direction=minimize",
        "evaluate.seeds=[0]",
        "evaluate.baseline=false",
        *extra,
    ])


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
    """The sweep's study, opened as the sweeper opens it (a controller may be creating the database right now)."""
    from sweeper.store.storage import make_storage

    url = storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    return optuna.load_study(study_name=study_name, storage=make_storage(url, sweep_dir))


def counted(study: optuna.Study) -> list:
    """Trials that count toward n_trials: all but failed ones that were re-queued or skipped as repeats."""
    return [
        t
        for t in study.get_trials()
        if not (t.state == TrialState.FAIL and (t.user_attrs.get("requeued") or t.user_attrs.get("skipped")))
    ]


def synthetic_sweep_args(
    tiny_model_dir: Path, sweep_dir: Path, *extra: str, seconds: float = 0.4, steps: int = 2
) -> list[str]:
    """A sweep of synthetic trials (they sleep and report instead of training): the sweep machinery under test."""
    return [
        *sweep_args(tiny_model_dir, sweep_dir),
        f"hydra.sweeper.synthetic_trial={{seconds:{seconds},steps:{steps}}}",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
        *extra,
    ]


def assert_resumed_exactly(sweep_dir: Path, finished: dict, total: int) -> dict:
    """After a kill and a resume: every trial finished before is unchanged, none is left RUNNING, the total exact."""
    study = load(sweep_dir)
    trials = {t.number: t for t in study.get_trials()}
    for number, before in finished.items():  # nothing finished was lost or changed
        assert trials[number].state == before.state and trials[number].values == before.values
    assert not [t.number for t in trials.values() if t.state == TrialState.RUNNING]
    assert len(counted(study)) == total
    return trials


def wait_for(predicate, timeout: float = 180.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (returns True) or ``timeout`` passes (returns False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (KeyError, ConfigError, sqlalchemy.exc.OperationalError):
            pass  # the sweep dir, the storage or the study does not exist yet, or is locked for a moment
        time.sleep(interval)
    return False


def trained(study: optuna.Study) -> list:
    """Trials that ran a configuration: not skipped or answered from an identical earlier trial."""
    return [t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]


def repeated_configurations(study: optuna.Study) -> int:
    """How many trained trials repeat another trained trial's params (a retry repeats its own trial: not counted)."""
    from sweeper.store.duplicates import repeated_configurations as repeats

    return repeats(study.get_trials())
