"""One sweep trial in a persistent worker process, and the worker's loop.

A worker keeps the pristine base model loaded between trials (the recipe trains
a deep copy), opens the study storage itself to report evaluations and read
prune decisions, and turns every way a trial can end into a ``TrialOutcome``,
so one trial's failure never takes the worker down. The worker never calls
``tell``: the controller does, from the outcome.

torch is imported only inside functions: ``worker_main`` must set
CUDA_VISIBLE_DEVICES before anything touches CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import optuna

from evaluate.reporter import RunPruned
from sweeper.slots.compose import ConfigSource, compose_trial
from sweeper.slots.reporting import OptunaReporter
from train.errors import UserError

PROGRESS_INTERVAL = 0.5  # seconds between progress messages: cheap for the pipe and the controller


@dataclass
class TrialJob:
    trial_number: int
    trial_id: int
    study_name: str
    storage_url: str
    overrides: list[str]  # Hydra overrides of conf/config.yaml: base ones + sampled ones
    run_dir: str
    report_metric: str = "objective"
    fault: dict | None = None  # {"kind": "oom" | "exit" | "nan" | "error", "at_step": k}
    objective_metrics: list[str] | None = None  # multi-objective: these scores of the best evaluation
    pruner: dict | None = None  # hydra.sweeper.pruner (_target_ spec): pruners are not in the storage
    synthetic: dict | None = None  # hydra.sweeper.synthetic_trial: sleep and report instead of training
    heartbeat_interval: int = 10  # the storage settings the controller opened it with
    grace_period: int = 30
    # The controller's config name, search path and hydra.* overrides: trials compose as the controller does.
    source: ConfigSource = field(default_factory=ConfigSource.default)


@dataclass
class TrialOutcome:
    trial_number: int
    state: str  # "COMPLETE" | "PRUNED" | "FAIL"
    values: list[float] | None
    reason: str | None
    seconds: float
    rss_mb: float  # worker's resident memory after the trial
    step: int  # last optimizer step reached
    # The run's best evaluation, also for pruned trials: what promotion and reports read.
    best: dict | None = None


def best_record(recipe) -> dict | None:
    """The best evaluation of a run, with its checkpoint's sha256 (promotion refuses a file that changed)."""
    best = getattr(getattr(recipe, "evaluator", None), "best", None)
    if best is None or not best.checkpoint or not Path(best.checkpoint).is_file():
        return None
    with open(best.checkpoint, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {
        "step": best.step,
        "epoch": best.epoch,
        "checkpoint": best.checkpoint,
        "sha256": digest,
        "scores": {k: float(v) for k, v in best.scores.items()},
        "value": best.value,
        "grid": best.grid_path,
        "images": list(best.images),
        "demo_weights": best.demo_weights,
        "base_model_hash": recipe.model.model_hash,
    }


@lru_cache(maxsize=4)
def _cached_storage(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.BaseStorage:
    from sweeper.store.storage import make_storage

    # The controller's own opening function, so every URL form works here too; once per worker, not per trial.
    return make_storage(url, Path("."), heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def open_study(job: TrialJob) -> optuna.Study:
    from hydra.utils import instantiate

    # Prune decisions are made here, by this pruner, on the values in the storage. None: Optuna's default.
    pruner = instantiate(job.pruner) if job.pruner else None
    storage = _cached_storage(job.storage_url, job.heartbeat_interval, job.grace_period)
    from sweeper.store.storage import describe_storage

    logging.getLogger(__name__).info(
        "trial %d reports to study %r through %s", job.trial_number, job.study_name, describe_storage(job.storage_url)
    )
    return optuna.load_study(study_name=job.study_name, storage=storage, pruner=pruner)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def base_model_for(model_cfg, base_models: dict):
    """The pristine base for this model config, loaded once; a different model replaces it (memory)."""
    from train.models.loading import load_base_model

    key = json.dumps(dataclasses.asdict(model_cfg), sort_keys=True, default=str)
    if key not in base_models:
        base_models.clear()  # free the old base before loading the new one
        base_models[key] = load_base_model(model_cfg)
    return base_models[key]


class FaultInjector:
    """Test faults at one step, through the same paths real failures take."""

    def __init__(self, fault: dict | None):
        self.kind = fault["kind"] if fault else None
        self.at_step = int(fault.get("at_step", 1)) if fault else None

    def due(self, step: int) -> bool:
        return self.kind is not None and step == self.at_step

    def __call__(self, step: int, recipe) -> None:
        if not self.due(step):
            return
        import torch

        if self.kind == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if self.kind == "exit":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "nan":
            if recipe is None:  # a synthetic trial: the same outcome the recipe's divergence check gives
                from train.recipe import TrainingDiverged

                raise TrainingDiverged(f"loss is nan at step {step} (injected)")
            # A NaN weight makes the next loss NaN: the recipe's own divergence check fires.
            param = next(p for group in recipe.trainable.values() for p in group)
            with torch.no_grad():
                param.view(-1)[0] = float("nan")
        if self.kind == "error":
            raise RuntimeError("injected error")


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def classify_failure(err: Exception, step: int) -> tuple[str, str]:
    """(state, reason) for an exception that ended a trial."""
    from train.recipe import TrainingDiverged

    if isinstance(err, RunPruned):
        return "PRUNED", str(err)
    if isinstance(err, TrainingDiverged):
        return "PRUNED", f"diverged: {err}"
    if _is_oom(err):
        return "FAIL", f"CUDA out of memory at step {step}"
    if isinstance(err, UserError):
        return "FAIL", str(err)
    return "FAIL", f"{type(err).__name__}: {err}"


def trial_values(job: TrialJob, evaluator) -> list[float]:
    """The values to tell Optuna, from the run's best evaluation."""
    best = evaluator.best
    if best is None:
        raise ValueError("no evaluation produced an objective value")
    if job.objective_metrics:
        missing = [m for m in job.objective_metrics if m not in best.scores]
        if missing:
            raise ValueError(f"objective metrics {missing} not in the evaluation scores {sorted(best.scores)}")
        values = [float(best.scores[m]) for m in job.objective_metrics]
    else:
        values = [float(best.value)]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective values are not finite: {values}")
    return values


def run_trial(job: TrialJob, base_models: dict, progress: Callable[[int, bool], None] | None = None) -> TrialOutcome:
    """Train one trial to its outcome; ``progress(step, force)`` is told of each optimizer step."""
    from train.recipe import LoRATrainingRecipe

    started = time.monotonic()
    faults = FaultInjector(job.fault)

    set_total = getattr(progress, "set_total", None)  # optional: the live view's step/total and ETA

    def on_step(step: int, recipe) -> None:
        if set_total is not None:
            set_total(recipe.total_steps)
        if progress is not None:
            progress(step, faults.due(step))  # flushed before a fault, so the pool can name the step
        faults(step, recipe)

    recipe, step, values = None, 0, None
    log_handler = trial_log(Path(job.run_dir))
    try:
        cfg = compose_trial(job.source, job.overrides, job.run_dir)
        if not cfg.evaluate.enabled:
            raise UserError("no evaluation configured")  # nothing to tell Optuna; spend no training on it
        reporter = OptunaReporter(open_study(job), job.trial_id, job.report_metric)
        base = base_model_for(cfg.model, base_models)
        recipe = LoRATrainingRecipe(cfg, Path(job.run_dir), reporter, base_model=base, on_step=on_step)
        recipe.setup()
        recipe.train()
        step = recipe.final_step
        values = trial_values(job, recipe.evaluator)
        state, reason = "COMPLETE", None
    except Exception as err:  # any trial failure ends the trial, never the worker
        step = getattr(recipe, "final_step", 0)
        state, reason = classify_failure(err, step)
    finally:
        best = _best_record_or_none(recipe, job.trial_number)
        del recipe  # nothing trial-specific may outlive the trial
        _free_memory()
    seconds = time.monotonic() - started
    outcome = TrialOutcome(job.trial_number, state, values, reason, seconds, rss_mb(), step, best)
    logging.getLogger("sweeper.slots.worker").info("trial %d %s%s", job.trial_number, state, f": {reason}" if reason else "")
    logging.getLogger().removeHandler(log_handler)
    log_handler.close()
    return outcome


def _best_record_or_none(recipe, trial_number: int) -> dict | None:
    try:
        return best_record(recipe)
    except OSError as err:  # the record serves promotion and reports; the trial's outcome stands without it
        logging.getLogger("sweeper.slots.worker").warning("trial %d: best checkpoint unreadable: %s", trial_number, err)
        return None


def trial_log(run_dir: Path) -> logging.Handler:
    """Everything logged during the trial also goes to <run_dir>/trial.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "trial.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _ProgressSender:
    """Sends ("progress", trial, step, total, steps/s) at most every PROGRESS_INTERVAL, and the last step.

    Exits if the controller is gone. The rate counts from the first step on, so loading and caching
    before it do not slow the ETA's clock.
    """

    def __init__(self, conn, trial_number: int, parent_pid: int, total: int | None = None):
        self.conn, self.trial_number, self.parent_pid, self.total = conn, trial_number, parent_pid, total
        self.last_sent = 0.0
        self.first: tuple[int, float] | None = None  # (step, time) of the first step told

    def set_total(self, total: int) -> None:
        self.total = total

    def rate(self, step: int, now: float) -> float | None:
        if self.first is None:
            self.first = (step, now)
        first_step, first_time = self.first
        return (step - first_step) / (now - first_time) if step > first_step and now > first_time else None

    def __call__(self, step: int, force: bool = False) -> None:
        if os.getppid() != self.parent_pid:
            os._exit(1)  # an orphan must not keep training on a GPU the resumed sweep will use
        now = time.monotonic()
        rate = self.rate(step, now)
        if force or now - self.last_sent >= PROGRESS_INTERVAL or step == self.total:
            self.conn.send(("progress", self.trial_number, step, self.total, rate))
            self.last_sent = now


@contextlib.contextmanager
def output_to(log_file: Path) -> Iterator[None]:
    """The process's stdout and stderr (progress, warnings, a library's prints) append to ``log_file``.

    At the file descriptors, so output from C code and child processes goes there too: a worker never
    writes over the controller's view of the sweep.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (target, *saved):
            os.close(fd)


def _die_with_parent(parent: int | None) -> None:
    """Linux: the kernel SIGKILLs this worker the moment its controller dies, even mid-step (no orphan on a GPU)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: _ProgressSender's parent check still stops an orphan at its next step
    if parent is not None and os.getppid() != parent:  # the controller died before the setting took
        os._exit(1)


def worker_main(
    slot_index: int, device_env: str | None, conn, threads: int | None = None, parent: int | None = None
) -> None:
    """Process entry: run the TrialJobs received on ``conn`` until None (or the controller closes the pipe)."""
    _die_with_parent(parent)
    if device_env is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device_env
    # Ctrl-C reaches the whole process group; the controller decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    if threads:
        torch.set_num_threads(threads)  # slots share the host's cores
    parent_pid = os.getppid()
    base_models: dict = {}
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        conn.send(("started", job.trial_number, os.getpid()))
        # Everything the trial prints goes to its trial.log; its outcome (reason included) goes to the controller.
        with output_to(Path(job.run_dir) / "trial.log"):
            if job.synthetic is not None:
                from sweeper.slots.synthetic import run_synthetic_trial

                steps = int(job.synthetic.get("steps", 4))
                outcome = run_synthetic_trial(job, _ProgressSender(conn, job.trial_number, parent_pid, steps))
            else:
                outcome = run_trial(job, base_models, _ProgressSender(conn, job.trial_number, parent_pid))
        conn.send(("done", outcome))
