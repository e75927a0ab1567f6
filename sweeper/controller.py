"""The sweep controller: asks Optuna for trials and keeps every slot busy.

A slot that frees up (a trial finished, was pruned or failed) gets the next
trial at once: there is no batch barrier. Every outcome is told to the study
with its reason, so the storage is the record: killing the controller loses
no finished trial, and re-running the same command resumes the study.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from evaluate.secrets import scrub_text
from sweeper.budget import TrialBudget
from sweeper.config import SweeperConfig
from sweeper.live_table import LiveTable
from sweeper.pool import SlotPool, slot_devices
from sweeper.results import write_results
from sweeper.search_space import check_enqueue, parse_search_space
from sweeper.storage import describe_storage, make_storage, storage_file
from sweeper.study import Heartbeat, create_study, recover_stale_trials
from sweeper.worker import TrialJob, TrialOutcome, compose_run_config
from train.errors import ConfigError

log = logging.getLogger(__name__)
STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}


@dataclass
class Running:
    trial: optuna.Trial
    slot: int
    started: float
    values: dict[str, object]
    step: int = 0


@dataclass
class SweepTotals:
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    slot_seconds: float = 0.0
    outcomes: list[TrialOutcome] = field(default_factory=list)


class SweepController:
    def __init__(
        self,
        cfg: SweeperConfig,
        *,
        base_overrides: list[str],
        sweep_dir: Path,
        config_dir: Path,
        compose: Callable[[list[str]], object] | None = None,
    ):
        self.cfg = cfg
        # Composes one trial's RunConfig from overrides; inside Hydra, Hydra's own loader.
        self.compose = compose
        self.base_overrides = list(base_overrides)
        self.sweep_dir = Path(sweep_dir)
        self.config_dir = Path(config_dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage_url = cfg.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        self.multi_objective = isinstance(cfg.direction, list) and len(cfg.direction) > 1
        # Everything the user can get wrong is checked before a worker starts.
        self.space = parse_search_space(cfg.params, cfg.conditional, cfg.derived)
        check_enqueue(self.space, cfg.enqueue)
        self.storage = make_storage(
            self.storage_url,
            self.sweep_dir,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.grace_period,
        )
        self._check_trial_config()
        self.study = create_study(cfg, self.storage)
        # The budget and stale-trial recovery share the study lock (beside the storage file, or in the server).
        self.budget = TrialBudget(self.study, self.storage, cfg.n_trials)
        if storage_file(self.storage) is None:
            # Hosts sharing a server must not all propose the same startup trials from one seed.
            self.study.sampler.reseed_rng()
        self.running: dict[int, Running] = {}
        self.totals = SweepTotals()

    def run(self) -> optuna.Study:
        cfg = self.cfg
        log.info("study %r on %s", cfg.study_name, describe_storage(self.storage_url))
        recovered = recover_stale_trials(self.study, self.storage, cfg.grace_period)
        if recovered:
            log.warning("trials %s were left RUNNING by a dead controller: failed and re-queued", recovered)
        for params in cfg.enqueue:
            self.study.enqueue_trial(self.space.enqueue_params(params), skip_if_exists=True)
        pool = SlotPool(slot_devices(cfg.gpus, cfg.trials_per_gpu, cfg.cpu_slots))
        heartbeat = Heartbeat(self.study, self.storage, cfg.heartbeat_interval)
        started = time.time()
        table = LiveTable(self.study, self.running, pool)
        pool.start()
        heartbeat.start()
        try:
            with table:
                while True:
                    if self._may_start(started):
                        self._fill_slots(pool)
                    if not self.running:
                        break
                    for _slot, kind, payload in pool.poll(timeout=0.5):
                        if kind == "progress":
                            number, step = payload
                            if number in self.running:
                                self.running[number].step = step
                        elif kind == "done":
                            self._finish(payload)
                    heartbeat.set_running([r.trial for r in self.running.values()])
                    table.refresh()
        finally:
            heartbeat.stop()
            pool.shutdown()
        self.utilization = pool.utilization()
        write_results(self.study, self.sweep_dir / "optimization_results.yaml")
        table.print_best()
        return self.study

    # ------------------------------------------------------------ internals
    def _check_trial_config(self) -> None:
        """Compose one trial's config with the base overrides: bad input stops before any worker starts."""
        job = self._job(-1, -1, [], self.sweep_dir / "preflight")
        overrides = [*job.overrides, f"paths.output_dir={job.run_dir}"]
        run_cfg = self.compose(overrides) if self.compose else compose_run_config(job)
        directions = self.cfg.direction if isinstance(self.cfg.direction, list) else [self.cfg.direction]
        if not run_cfg.evaluate.enabled:
            raise ConfigError("evaluate.enabled: a sweep needs an evaluation to score trials (e.g. evaluate=demo)")
        if len(directions) == 1 and directions[0] != run_cfg.evaluate.objective.direction:
            raise ConfigError(
                f"hydra.sweeper.direction: {directions[0]} disagrees with evaluate.objective.direction "
                f"({run_cfg.evaluate.objective.direction}); the trial value is the evaluation objective"
            )

    def _job(self, number: int, trial_id: int, overrides: list[str], run_dir: Path) -> TrialJob:
        return TrialJob(
            trial_number=number,
            trial_id=trial_id,
            study_name=self.cfg.study_name,
            storage_url=self.storage_url,
            overrides=self.base_overrides + overrides,
            run_dir=str(run_dir),
            config_dir=str(self.config_dir),
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
        stop = None
        if cfg.timeout is not None and time.time() - started > cfg.timeout:
            stop = f"timeout of {cfg.timeout:g} s reached"
        elif cfg.gpu_hours is not None and self._slot_hours() >= cfg.gpu_hours:
            stop = f"budget of {cfg.gpu_hours:g} GPU-hours spent"
        if stop and not getattr(self, "_stop_logged", False):
            log.info("%s: no new trials; waiting for the running ones", stop)
            self._stop_logged = True
        return stop is None

    def _slot_hours(self) -> float:
        done = sum(t.duration.total_seconds() for t in self.study.get_trials(deepcopy=False) if t.duration)
        return done / 3600.0

    def _fill_slots(self, pool: SlotPool) -> None:
        for slot in pool.idle_slots():
            trial = self.budget.ask()
            if trial is None:
                return
            values = self.space.sample(trial)
            run_dir = self.sweep_dir / str(trial.number)
            job = self._job(trial.number, trial._trial_id, self.space.overrides(values), run_dir)
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("overrides", [scrub_text(o) for o in job.overrides])
            pool.submit(slot, job)
            self.running[trial.number] = Running(trial, slot, time.time(), values)

    def _fault_for(self, number: int) -> dict | None:
        for fault in self.cfg.fault_injection:
            if fault.trial == number:
                return {"kind": fault.kind, "at_step": fault.at_step}
        return None

    def _finish(self, outcome: TrialOutcome) -> None:
        running = self.running.pop(outcome.trial_number, None)
        if running is None:
            return
        trial = running.trial
        state = outcome.state if outcome.state != "COMPLETE" or outcome.values else "FAIL"
        retry = state == "FAIL" and int(trial.user_attrs.get("attempt", 0)) < self.cfg.max_retries
        try:
            if outcome.reason:
                trial.set_user_attr("fail_reason" if state == "FAIL" else "prune_reason", outcome.reason)
            trial.set_user_attr("seconds", round(outcome.seconds, 2))
            if outcome.best is not None:  # promotion and reports read the best checkpoint from here
                trial.set_user_attr("best", outcome.best)
            if retry:  # marked before tell: a finished trial's attributes are read-only
                trial.set_user_attr("requeued", True)
            if state == "COMPLETE":
                self.study.tell(trial, outcome.values if self.multi_objective else outcome.values[0])
            else:
                self.study.tell(trial, state=STATES[state])
        except UpdateFinishedTrialError:
            # Another host already failed it as stale (e.g. a partition longer than the grace period).
            log.warning("trial %d was already finished elsewhere; its result is dropped", trial.number)
            return
        counter = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}[state]
        setattr(self.totals, counter, getattr(self.totals, counter) + 1)
        self.totals.outcomes.append(outcome)
        if retry:
            self._retry(trial)
        log.info("trial %d %s%s", trial.number, state, f": {outcome.reason}" if outcome.reason else "")

    def _retry(self, trial: optuna.Trial) -> None:
        attempt = int(trial.user_attrs.get("attempt", 0))
        self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1})
        log.info("trial %d re-queued (retry %d of %d)", trial.number, attempt + 1, self.cfg.max_retries)
