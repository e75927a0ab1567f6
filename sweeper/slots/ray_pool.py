"""The slot pool on a Ray cluster: one actor per slot, the same interface as the local ``SlotPool``.

``hydra.sweeper.backend=ray``. Optuna's storage stays the only record and the
controller keeps the budget, heartbeats, stale-trial recovery and retries;
Ray only places the workers. Each actor asks for ``num_gpus_per_slot`` (or the
configured custom resources), is created up front so an autoscaler sees the
whole demand, keeps its base models loaded across trials, and runs the same
``run_trial`` a local worker runs.

Trials are at most once from Ray's side (``max_task_retries=0``): a trial
whose actor or node dies ends FAIL with the reason and its last step, and the
controller decides any retry. The actor itself restarts (``max_restarts``) on
any node with a free slot; its slot gets no trial until the restarted actor
answers. Actors are owned by the driver, so killing the controller kills them.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.slots.pool import slot_utilization
from sweeper.slots.worker import TrialJob, TrialOutcome
from train.errors import ConfigError

log = logging.getLogger(__name__)
PROGRESS_INTERVAL = 1.0  # seconds between progress reports of a busy actor
READ_ONLY_KEYS = ("model.path",)


class TrialActor:
    """One slot's worker process on some node (wrapped by ``ray.remote`` in ``RayPool.start``)."""

    def __init__(self, slot: int, threads: int | None, board: Any):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.slot, self.board, self.base_models = slot, board, {}

    def where(self) -> dict[str, Any]:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def sees(self, path: str, token: str) -> bool:
        """True when ``path`` holds ``token``: this node shares the controller's filesystem."""
        try:
            return Path(path).read_text() == token
        except OSError:
            return False

    def run(self, job: TrialJob) -> TrialOutcome:
        from sweeper.slots.worker import output_to, run_trial

        tracker = _Progress(self.board, self.slot, job.trial_number)
        with output_to(Path(job.run_dir) / "trial.log"):
            if job.synthetic is not None:
                from sweeper.slots.synthetic import run_synthetic_trial

                tracker.set_total(int(job.synthetic.get("steps", 4)))
                return run_synthetic_trial(job, tracker)
            return run_trial(job, self.base_models, tracker)


class _Progress:
    """``progress(step, force)`` for run_trial: told to the pool's ProgressBoard at most every interval.

    ``force`` (a step just before an injected fault) waits until the board has it, so a trial
    whose actor then dies is reported at the step it reached.
    """

    def __init__(self, board: Any, slot: int, trial: int):
        self.board, self.slot, self.trial = board, slot, trial
        self.total, self.first, self.last_sent = None, None, 0.0

    def set_total(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int, force: bool = False) -> None:
        import ray

        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        first_step, first_time = self.first
        rate = (step - first_step) / (now - first_time) if step > first_step and now > first_time else None
        if force or now - self.last_sent >= PROGRESS_INTERVAL or step == self.total:
            sent = self.board.report.remote(self.slot, (self.trial, step, self.total, rate))
            self.last_sent = now
            if force:
                ray.get(sent)


class ProgressBoard:
    """The latest progress of each slot's trial (a small actor beside the driver)."""

    def __init__(self):
        self.latest: dict[int, tuple] = {}

    def report(self, slot: int, progress: tuple) -> None:
        self.latest[slot] = progress

    def read(self) -> dict[int, tuple]:
        return self.latest


@dataclass
class _RaySlot:
    actor: Any
    job: TrialJob | None = None
    ref: Any = None  # the running trial's ObjectRef
    ready: Any = None  # a pending where() call: the slot takes no trial until it answers
    job_started: float = 0.0
    step: int = 0
    told: tuple | None = None  # the last progress passed on as an event
    where: dict = field(default_factory=dict)


class RayPool:
    def __init__(self, settings: Any, slots: int, shared_paths: dict[str, Path]):
        self.settings, self.devices = settings, [f"ray:{i}" for i in range(slots)]
        self.shared_paths = shared_paths  # key -> a dir every node must see (sweep dir, cache dir, model)
        self._slots: list[_RaySlot] = []
        self.busy_seconds: dict[int, float] = {i: 0.0 for i in range(slots)}
        self.started_at: float | None = None

    @classmethod
    def connect(cls, cfg: Any, shared_paths: dict[str, Path]) -> RayPool:
        """Join the cluster (``ray.address``, else RAY_ADDRESS, else a local instance) and size the slots."""
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "hydra.sweeper.backend=ray needs Ray on this machine and every node: pip install -e '.[ray]'"
            ) from None
        settings = cfg.ray
        if not ray.is_initialized():
            address = settings.address or os.environ.get("RAY_ADDRESS") or None
            try:
                ray.init(
                    address=address,
                    runtime_env=settings.runtime_env or None,
                    include_dashboard=False,
                    log_to_driver=False,  # a worker's output goes to its trial.log, never over the live view
                    configure_logging=False,
                )
            except (ConnectionError, ValueError) as err:
                raise ConfigError(
                    f"hydra.sweeper.ray.address: cannot join the Ray cluster at {address}: {err}{_auth_hint(err)}"
                ) from None
        total = ray.cluster_resources()
        gpus_per_slot = settings.num_gpus_per_slot
        if gpus_per_slot is None:
            gpus_per_slot = 1.0 / cfg.trials_per_gpu if total.get("GPU", 0) > 0 else 0.0
        settings.num_gpus_per_slot = gpus_per_slot
        slots = settings.max_slots or _fitting_slots(total, gpus_per_slot, settings.resources) or cfg.cpu_slots
        if cfg.n_jobs is not None:
            slots = min(slots, cfg.n_jobs)
        log.info("Ray cluster %s: %d slots (%g GPU%s each)", total, slots, gpus_per_slot, _and_resources(settings))
        return cls(settings, slots, shared_paths)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        import ray

        remote = ray.remote(
            num_cpus=self.settings.num_cpus_per_slot,
            num_gpus=self.settings.num_gpus_per_slot,
            resources=dict(self.settings.resources or {}),
            max_restarts=self.settings.max_restarts,
            max_task_retries=0,  # at most once: the controller decides retries
            max_concurrency=2,  # a progress call answers while a trial runs
        )(TrialActor)
        # On the driver's node, with no resources of its own: it must not take a slot's place.
        self._board = ray.remote(num_cpus=0, max_restarts=-1)(ProgressBoard).options(
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            )
        ).remote()
        self._board_read = None
        threads = self.settings.threads_per_slot
        self._slots = [_RaySlot(remote.remote(i, threads, self._board)) for i in range(len(self.devices))]
        for slot in self._slots:  # every actor is placed up front; an autoscaler sees the demand
            slot.ready = slot.actor.where.remote()
        self._wait_ready()
        self._check_shared_paths()
        self.started_at = time.monotonic()

    def _wait_ready(self) -> None:
        import ray

        timeout = self.settings.start_timeout
        refs = [s.ready for s in self._slots]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            raise ConfigError(
                f"hydra.sweeper.ray: {len(pending)} of {len(refs)} slots found no node within {timeout:g} s "
                f"(each asks for num_gpus_per_slot={self.settings.num_gpus_per_slot:g}"
                f"{', resources=' + str(dict(self.settings.resources)) if self.settings.resources else ''}); "
                "lower hydra.sweeper.ray.max_slots or add nodes"
            )
        for index, slot in enumerate(self._slots):
            slot.where, slot.ready = ray.get(slot.ready), None
            log.info("slot %d: actor on node %s (pid %d)", index, slot.where["node"][:12], slot.where["pid"])

    def _check_shared_paths(self) -> None:
        """Folders the sweep writes: each actor reads a marker written here. Files it reads: each must exist there."""
        import ray

        token = uuid.uuid4().hex
        for key, path in self.shared_paths.items():
            if key in READ_ONLY_KEYS:  # a user's model: never written into, only looked for
                self._refuse_blind(key, path, ray.get([s.actor.exists.remote(str(path)) for s in self._slots]))
                continue
            marker = Path(path) / f".shared-check-{token}"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(token)
            try:
                seen = ray.get([s.actor.sees.remote(str(marker), token) for s in self._slots])
            finally:
                marker.unlink(missing_ok=True)
            self._refuse_blind(key, path, seen)

    def _refuse_blind(self, key: str, path: Path, seen: list[bool]) -> None:
        blind = sorted({s.where["node"][:12] for s, ok in zip(self._slots, seen, strict=True) if not ok})
        if blind:
            raise ConfigError(
                f"{key}: {path} is not visible from Ray node(s) {', '.join(blind)}; "
                "put it on a filesystem every node mounts at the same path"
            )

    def shutdown(self, timeout: float = 10.0) -> None:
        import ray

        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        if self._slots:
            ray.kill(self._board, no_restart=True)
        self._slots = []

    # ---------------------------------------------------------------- jobs
    def idle_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if s.job is None and s.ready is None]

    def pids(self) -> list[int | None]:
        return [s.where.get("pid") for s in self._slots]

    def nodes(self) -> list[str | None]:
        return [s.where.get("node") for s in self._slots]

    def submit(self, slot: int, job: TrialJob) -> None:
        target = self._slots[slot]
        if target.job is not None or target.ready is not None:
            raise ValueError(f"slot {slot} is not idle")
        target.job, target.job_started, target.step = job, time.monotonic(), 0
        target.ref = target.actor.run.remote(job)

    def poll(self, timeout: float) -> list[tuple[int, str, object]]:
        import ray

        waiting = [s.ref for s in self._slots if s.ref is not None] + [s.ready for s in self._slots if s.ready]
        if waiting:
            ray.wait(waiting, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)
        events = self._progress()
        for index, slot in enumerate(self._slots):
            if slot.ready is not None:
                self._check_restarted(index)
            if slot.ref is None:
                continue
            done, _ = ray.wait([slot.ref], timeout=0)
            if done:
                events.append((index, "done", self._outcome(index)))
        return events

    def utilization(self) -> float:
        return slot_utilization(self.busy_seconds, [s.job_started for s in self._slots if s.job is not None], self.started_at)

    # ------------------------------------------------------------ internals
    def _progress(self) -> list[tuple[int, str, object]]:
        """Progress events from the board: one read at a time in flight, taken when it has answered."""
        import ray

        events: list[tuple[int, str, object]] = []
        if self._board_read is not None:
            done, _ = ray.wait([self._board_read], timeout=0)
            if not done:
                return events
            for index, progress in ray.get(self._board_read).items():
                slot = self._slots[index]
                if slot.job is not None and progress[0] == slot.job.trial_number and progress != slot.told:
                    slot.step, slot.told = progress[1], progress
                    events.append((index, "progress", progress))
        self._board_read = self._board.read.remote()
        return events

    def _outcome(self, index: int) -> TrialOutcome:
        import ray

        slot = self._slots[index]
        job = slot.job
        try:
            outcome = ray.get(slot.ref)
        except ray.exceptions.RayError as err:
            told = ray.get(self._board.read.remote()).get(index)  # the last step it reached, forced before a fault
            if told is not None and told[0] == job.trial_number:
                slot.step = told[1]
            outcome = TrialOutcome(
                trial_number=job.trial_number,
                state="FAIL",
                values=None,
                reason=f"{_death_reason(err)} at step {slot.step}",
                seconds=time.monotonic() - slot.job_started,
                rss_mb=0.0,
                step=slot.step,
            )
            log.warning("slot %d: trial %d failed: %s; the actor restarts", index, job.trial_number, outcome.reason)
            slot.ready = slot.actor.where.remote()  # no trial for this slot until the new actor answers
        self.busy_seconds[index] += time.monotonic() - slot.job_started
        slot.job, slot.ref = None, None
        return outcome

    def _check_restarted(self, index: int) -> None:
        import ray

        slot = self._slots[index]
        done, _ = ray.wait([slot.ready], timeout=0)
        if not done:
            return
        try:
            slot.where = ray.get(slot.ready)
            slot.ready = None
            log.info("slot %d: actor restarted on node %s", index, slot.where["node"][:12])
        except ray.exceptions.RayError:
            slot.ready = slot.actor.where.remote()  # still restarting (or out of restarts: it keeps failing)


def _fitting_slots(total: dict, gpus_per_slot: float, resources: dict) -> int:
    """How many slots the cluster's resources hold; 0 when nothing bounds them (a CPU cluster)."""
    bounds = [int(total.get("GPU", 0) / gpus_per_slot + 1e-9)] if gpus_per_slot > 0 else []
    bounds += [int(total.get(name, 0) / amount + 1e-9) for name, amount in (resources or {}).items() if amount > 0]
    return min(bounds) if bounds else 0


def _auth_hint(err: BaseException) -> str:
    # Ray sends its token to an explicit address only when told to (RAY_AUTH_MODE=token), while `ray start`
    # turns token auth on wherever a token exists: the usual reason a reachable cluster refuses a driver.
    causes, cause = [], err
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if "Authentication" not in " ".join(causes):
        return ""
    return (
        ". The cluster refused this driver's authentication: it uses token authentication (Ray's default "
        "where ~/.ray/auth_token exists); set RAY_AUTH_MODE=token and give this driver the cluster's token "
        "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    )


def _and_resources(settings: Any) -> str:
    return f" and {dict(settings.resources)}" if settings.resources else ""


def _death_reason(err: Exception) -> str:
    import ray

    if isinstance(err, ray.exceptions.ActorDiedError | ray.exceptions.ActorUnavailableError):
        text = str(err)
        node = " (its node died)" if "node" in text.lower() and "died" in text.lower() else ""
        return f"Ray actor died{node}"
    if isinstance(err, ray.exceptions.RayTaskError):
        return f"{type(err.cause).__name__}: {err.cause}" if err.cause else str(err).splitlines()[0]
    return f"{type(err).__name__}: {str(err).splitlines()[0]}"
