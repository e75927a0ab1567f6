"""The sweep controller: asks Optuna for trials and keeps every slot busy.

A slot that frees up (a trial finished, was pruned or failed) gets the next
trial at once: there is no batch barrier. Every outcome is told to the study
with its reason, so the storage is the record: killing the controller loses
no finished trial, and re-running the same command resumes the study. While it
runs, the controller keeps recovering trials a dead controller left RUNNING,
and it ends only when the study has its ``n_trials`` (or a limit stopped it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from evaluate.secrets import scrub_text
from sweeper.config import SweeperConfig
from sweeper.report.live_view import sweep_view
from sweeper.results.results import write_results
from sweeper.slots.compose import ConfigSource
from sweeper.slots.pool import SlotPool, concurrent_slots, slot_devices
from sweeper.slots.worker import TrialJob, TrialOutcome
from sweeper.space.custom import custom_search_space
from sweeper.space.grid import with_grid
from sweeper.space.preflight import check_search_space
from sweeper.space.search_space import check_enqueue, is_virtual, parse_search_space
from sweeper.space.trial_check import TrialCheck
from sweeper.store.budget import TrialBudget
from sweeper.store.duplicates import find_twin, settle_duplicate
from sweeper.store.proxy import check_worker_storage
from sweeper.store.storage import describe_storage, make_storage
from sweeper.store.study import Heartbeat, create_study, grid_points, recover_stale_trials, requeue_failed
from sweeper.store.warm_start import load_warm_start
from sweeper.verdict import MIN_JUDGED, FailureRate, SweepFailed, verdict

log = logging.getLogger(__name__)
STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}
MAX_DRAWS = 8  # draws per free slot before it waits: a small space may be all running or all done


@dataclass
class Running:
    trial: optuna.Trial
    slot: int
    started: float
    values: dict[str, object]
    step: int = 0
    total: int | None = None  # the trial's optimizer steps, once its worker knows them
    rate: float | None = None  # steps per second, as the worker measures them


@dataclass
class Draw:
    trial: optuna.Trial
    values: dict[str, object]
    twin: FrozenTrial | None  # a trial of the study with the same params, if any


class SweepController:
    def __init__(
        self,
        cfg: SweeperConfig,
        *,
        base_overrides: list[str],
        sweep_dir: Path,
        source: ConfigSource | None = None,
        task_config: Any = None,
    ):
        self.cfg = cfg
        self.base_overrides = list(base_overrides)
        self.sweep_dir = Path(sweep_dir)
        self.source = source or ConfigSource.default()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage_url = cfg.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        # Everything the user can get wrong is checked before a worker starts.
        self.space = parse_search_space(cfg.params, cfg.conditional, cfg.derived)
        check_enqueue(self.space, cfg.enqueue)
        self.extend_space = custom_search_space(cfg.custom_search_space, task_config)
        self.storage = make_storage(
            self.storage_url, self.sweep_dir, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period
        )
        checker = TrialCheck(cfg, self.base_overrides, self.sweep_dir / "preflight", self.source)
        base = checker([])  # the command line's own overrides first: their errors name their own keys
        # What every node of a Ray cluster must see at the same path (checked when the actors start).
        self.shared_paths = {
            "hydra.sweep.dir": self.sweep_dir,
            "paths.cache_dir": Path(base.paths.cache_dir).absolute(),
            "model.path": Path(base.model.path).expanduser().absolute(),
        }
        if cfg.direction is None:
            cfg.direction = base.evaluate.objective.direction
            log.info("direction %s, from evaluate.objective.direction", cfg.direction)
        self.multi_objective = cfg.multi_objective
        log.info("checked %d trial configs of the search space", check_search_space(self.space, checker))
        self.warm_start = None
        if cfg.warm_start:
            self.warm_start = load_warm_start(
                cfg.warm_start, cfg.warm_start_study, cfg.warm_start_top, self.space, cfg.directions(), self.sweep_dir
            )
        cfg.sampler = with_grid(cfg.sampler, self.space)
        self.study = create_study(cfg, self.storage)
        self.worker_storage_url = self.storage_url
        if cfg.worker_storage is not None:
            check_worker_storage(self.storage, self.study.study_name, cfg.worker_storage)
            self.worker_storage_url = cfg.worker_storage
        self.n_trials = cfg.n_trials
        self.grid = grid_points(cfg.sampler)
        if self.grid is not None and self.grid < cfg.n_trials:
            log.info("GridSampler: the grid has %d points; n_trials %d capped at %d", self.grid, cfg.n_trials, self.grid)
            self.n_trials = self.grid
        # The budget and stale-trial recovery share the study lock (beside the storage file, or in the server).
        self.budget = TrialBudget(self.study, self.storage, self.n_trials)
        self.running: dict[int, Running] = {}
        self.outcomes: list[TrialOutcome] = []  # this controller's trials, as the workers ended them
        self.stopped: str | None = None  # why no new trial starts (timeout, budget, failure rate)
        self._draw_after = 0.0  # monotonic time before which free slots wait (all draws were running twins)
        self._waiting_logged = False

    def run(self) -> optuna.Study:
        cfg = self.cfg
        log.info("study %r on %s", cfg.study_name, describe_storage(self.storage_url))
        for params in cfg.enqueue:
            self.study.enqueue_trial(self.space.enqueue_params(params), skip_if_exists=True)
        if self.warm_start is not None:
            log.info("%s", self.warm_start.describe())
            for values in self.warm_start.entries:
                self.study.enqueue_trial(self.space.enqueue_params(values), skip_if_exists=True)
        pool = self._pool()
        # Judged once MIN_JUDGED trials, or one per slot if more, have finished (the plugin judges a batch).
        self.failures = FailureRate(cfg.max_failure_rate, min_judged=max(MIN_JUDGED, len(pool.devices)))
        heartbeat = Heartbeat(self.study, self.storage, cfg.heartbeat_interval)
        started = time.time()
        next_recovery = 0.0
        self.view = sweep_view(self.study, self.running, len(pool.devices))
        pool.start()
        heartbeat.start()
        try:
            with self.view:
                while True:
                    if time.monotonic() >= next_recovery:  # a controller may die at any moment: keep checking
                        self._recover()
                        next_recovery = time.monotonic() + cfg.heartbeat_interval
                    if self._may_start(started):
                        self._fill_slots(pool)
                    if not self.running and self._study_done():
                        break
                    for _slot, kind, payload in pool.poll(timeout=0.5):
                        if kind == "progress":
                            self._progress(payload)
                        elif kind == "done":
                            self._finish(payload)
                    heartbeat.set_running([r.trial for r in self.running.values()])
                    self.view.refresh()
        finally:
            heartbeat.stop()
            pool.shutdown()
        self.utilization = pool.utilization()
        write_results(self.study, self.sweep_dir / "optimization_results.yaml", self._config_values)
        self.view.print_best()
        self._judge()
        return self.study

    # ------------------------------------------------------------ internals
    def _pool(self):
        """Worker processes on this machine, or one actor per slot on a Ray cluster."""
        cfg = self.cfg
        if cfg.backend == "ray":
            from sweeper.slots.ray_pool import RayPool

            return RayPool.connect(cfg, self.shared_paths)
        return SlotPool(concurrent_slots(slot_devices(cfg.gpus, cfg.trials_per_gpu, cfg.cpu_slots), cfg.n_jobs))

    def _recover(self) -> None:
        recovered = recover_stale_trials(self.study, self.storage, self.cfg.grace_period)
        if recovered:
            log.warning("trials %s were left RUNNING by a dead controller: failed and re-queued", recovered)

    def _study_done(self) -> bool:
        """Nothing of ours runs: done once stopped, or when the budget is spent and no trial may still come back.

        A RUNNING trial of another controller may belong to a dead one: it is
        waited for until it finishes or turns stale, is recovered and re-run.
        """
        if self.stopped is not None:
            return True
        if self.budget.remaining() > 0:
            return False
        others = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if others and not self._waiting_logged:
            log.info(
                "waiting for %d trial(s) of other controllers: they finish, or are re-run here if their "
                "controller died (no heartbeat for %d s)",
                len(others),
                self.cfg.grace_period,
            )
            self._waiting_logged = True
        return not others

    def _judge(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        completed = sum(t.state == TrialState.COMPLETE for t in trials)
        ran = self.budget.used()
        if self.grid is not None and ran >= self.grid:
            log.info("grid exhausted: all %d points of the grid ran", self.grid)
        problem = verdict(self.failures, completed, ran, self.n_trials, self.stopped)
        if problem:
            raise SweepFailed(problem)

    def _job(self, number: int, trial_id: int, overrides: list[str], run_dir: Path) -> TrialJob:
        return TrialJob(
            trial_number=number,
            trial_id=trial_id,
            study_name=self.cfg.study_name,
            storage_url=self.worker_storage_url,
            overrides=self.base_overrides + overrides,
            run_dir=str(run_dir),
            source=self.source,
            report_metric=self.cfg.report,
            fault=self._fault_for(number),
            objective_metrics=list(self.cfg.objectives) if self.multi_objective else None,
            pruner=dict(self.cfg.pruner) if self.cfg.pruner else None,
            synthetic=dataclasses.asdict(self.cfg.synthetic_trial) if self.cfg.synthetic_trial else None,
            heartbeat_interval=self.cfg.heartbeat_interval,
            grace_period=self.cfg.grace_period,
        )

    def _may_start(self, started: float) -> bool:
        cfg = self.cfg
        if self.stopped is None:
            if cfg.timeout is not None and time.time() - started > cfg.timeout:
                self.stopped = f"timeout of {cfg.timeout:g} s reached"
            elif cfg.gpu_hours is not None and self._slot_hours() >= cfg.gpu_hours:
                self.stopped = f"budget of {cfg.gpu_hours:g} GPU-hours spent"
            elif self.failures.exceeded():
                self.stopped = self.failures.describe()
            if self.stopped is not None:
                log.info("%s: no new trials; waiting for the running ones", self.stopped)
        return self.stopped is None

    def _slot_hours(self) -> float:
        done = sum(t.duration.total_seconds() for t in self.study.get_trials(deepcopy=False) if t.duration)
        return done / 3600.0

    def _draw(self, trial: optuna.Trial) -> Draw:
        """Under the budget's lock: sample the trial's params and look for a trial that already has them."""
        values = self.space.sample(trial)
        if self.extend_space is not None:
            values.update(self.extend_space(trial))
        return Draw(trial, values, find_twin(self.study, trial.number, trial.params))

    def _config_values(self, params: dict) -> dict:
        """A trial's values by the keys a user passes (results file): no virtual keys, derived ones included."""
        values = self.space.values_from_params(params)
        known = set(values) | self.space.param_names()
        values.update({name: value for name, value in params.items() if name not in known and not is_virtual(name)})
        return values

    def _fill_slots(self, pool: SlotPool) -> None:
        if time.monotonic() < self._draw_after:
            return
        for slot in pool.idle_slots():
            for _ in range(MAX_DRAWS):
                draw = self.budget.ask(self._draw)
                if draw is None:
                    return
                if draw.twin is None:
                    self._start(pool, slot, draw)
                    break
                log.info("trial %d: %s", draw.trial.number, settle_duplicate(self.study, draw.trial, draw.twin))
            else:  # MAX_DRAWS repeats in a row: let a running trial finish before drawing again
                self._draw_after = time.monotonic() + self.cfg.heartbeat_interval
                return

    def _start(self, pool: SlotPool, slot: int, draw: Draw) -> None:
        trial = draw.trial
        run_dir = self.sweep_dir / str(trial.number)
        job = self._job(trial.number, trial._trial_id, self.space.overrides(draw.values), run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", [scrub_text(o) for o in job.overrides])
        pool.submit(slot, job)
        self.running[trial.number] = Running(trial, slot, time.time(), draw.values)
        self.view.started(trial.number)

    def _progress(self, payload: tuple) -> None:
        number, step, total, rate = payload
        if number in self.running:
            running = self.running[number]
            running.step, running.total, running.rate = step, total, rate

    def _fault_for(self, number: int) -> dict | None:
        for fault in self.cfg.fault_injection:
            if fault.trial == number:
                return {"kind": fault.kind, "at_step": fault.at_step}
        return None

    def _finish(self, outcome: TrialOutcome) -> None:
        running = self.running.pop(outcome.trial_number, None)
        if running is None:
            return
        self._draw_after = 0.0  # a finished trial may settle draws that repeated it
        trial = running.trial
        state = outcome.state if outcome.state != "COMPLETE" or outcome.values else "FAIL"
        attempt = int(trial.user_attrs.get("attempt", 0))
        retry = state == "FAIL" and attempt < self.cfg.max_retries
        try:
            if outcome.reason:
                trial.set_user_attr("fail_reason" if state == "FAIL" else "prune_reason", outcome.reason)
            trial.set_user_attr("seconds", round(outcome.seconds, 2))
            if outcome.best is not None:  # promotion and reports read the best checkpoint from here
                trial.set_user_attr("best", outcome.best)
            if retry:  # marked before tell (a finished trial's attributes are read-only); enqueued after it
                trial.set_user_attr("retry_attempt", attempt + 1)
                trial.set_user_attr("requeued", True)
            if state == "COMPLETE":
                self.study.tell(trial, outcome.values if self.multi_objective else outcome.values[0])
            else:
                self.study.tell(trial, state=STATES[state])
        except UpdateFinishedTrialError:
            # Another host already failed it as stale (e.g. a partition longer than the grace period).
            log.warning("trial %d was already finished elsewhere; its result is dropped", trial.number)
            return
        self.failures.record(state, outcome.reason)
        self.outcomes.append(outcome)
        self.view.finished(self.storage.get_trial(trial._trial_id), outcome.step)  # one line per outcome
        if retry and trial.number in requeue_failed(self.study, self.storage):
            log.info("trial %d re-queued (retry %d of %d)", trial.number, attempt + 1, self.cfg.max_retries)
