"""The Optuna study of a sweep: created or resumed, its dead trials recovered, its live ones kept alive.

Re-running the same command resumes the study; trials left RUNNING by a dead
controller or host are failed and re-queued once. Liveness comes from Optuna's
own heartbeat on RDB server storages, and from a ``heartbeat`` user attr that
``Heartbeat`` refreshes on the others (SQLite, journal files, Redis).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import math
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import optuna
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.config import SweeperConfig
from sweeper.store.storage import study_lock, supports_heartbeat, unwrap_storage
from train.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLERS = {
    "optuna.samplers.TPESampler": (),  # multivariate: true, constant_liar: true for parallel slots
    "optuna.samplers.RandomSampler": (),
    "optuna.samplers.GridSampler": (),  # needs search_space
    "optuna.samplers.CmaEsSampler": ("cmaes",),
    "optuna.samplers.GPSampler": ("torch", "scipy"),
    "optuna.samplers.NSGAIISampler": (),
    "optuna.samplers.QMCSampler": ("scipy",),
}
PRUNERS = {
    f"optuna.pruners.{name}Pruner": ()
    for name in ("Median", "Percentile", "SuccessiveHalving", "Hyperband", "Wilcoxon", "Nop")
}
STALE_REASON = "stale: controller or host died"
SESSIONS_ATTR = "controller_sessions"  # how many controllers have opened the study: seeds each one's sampler


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop.

    Optuna's GridSampler calls ``study.stop()`` after the last grid point,
    which raises outside ``study.optimize()``: the tell of that trial would
    crash the controller. Here the trial budget decides when the sweep ends.
    """

    def after_trial(self, study, trial, state, values) -> None:
        pass


def _target(spec) -> str | None:
    return spec.get("_target_") if spec is not None and hasattr(spec, "get") else None


def _build(spec, key: str, base: type, shipped: dict[str, tuple[str, ...]]):
    """Instantiate ``hydra.sweeper.<key>`` from its ``_target_``; every mistake is a ConfigError."""
    if spec is None or isinstance(spec, base):
        return spec
    target = _target(spec)
    known = ", ".join(shipped)
    if not target:
        raise ConfigError(f"hydra.sweeper.{key}: needs a _target_, one of {known}")
    try:
        get_object(target)
    except Exception:
        raise ConfigError(f"hydra.sweeper.{key}._target_: unknown {target!r}; shipped: {known}") from None
    missing = [m for m in shipped.get(target, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"hydra.sweeper.{key}: {target} needs pip install {' '.join(missing)}")
    if target == "optuna.samplers.GridSampler":
        spec = {**spec, "_target_": f"{__name__}.AskTellGridSampler"}
    try:
        # _convert_=all: plain dicts/lists, since samplers store their settings as JSON (GridSampler).
        built = instantiate(spec, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"hydra.sweeper.{key}: {target} cannot be built: {cause}") from None
    if not isinstance(built, base):
        raise ConfigError(f"hydra.sweeper.{key}._target_: {target} is not an optuna.{key}s.{base.__name__}")
    return built


def session_seed(seed: int | None, study_name: str, session: int) -> int | None:
    """The sampler seed of one controller session: the configured seed for the study's first, then derived.

    Every controller that opens the study (a resume, a second host) is a new
    session with its own stream, so none re-proposes what another drew.
    """
    if seed is None or session == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{study_name}/{session}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _sampler_spec(spec, study_name: str, session: int):
    """``hydra.sweeper.sampler`` as this session builds it: its own seed; TPE parallel-aware unless told otherwise."""
    if spec is None or isinstance(spec, optuna.samplers.BaseSampler):
        return spec
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    spec.pop("_partial_", None)  # the plugin's grid node: its search space is filled in by then
    parameters = _parameters(_target(spec))
    if parameters:
        spec = _without_inherited(spec, parameters)
    if "constant_liar" in parameters and "constant_liar" not in spec:
        # Several slots or hosts run trials at once: without it TPE proposes near-copies of running trials.
        spec["constant_liar"] = True
    if "seed" in parameters:
        spec["seed"] = session_seed(spec.get("seed"), study_name, session)
    return spec


def _without_inherited(spec: dict, parameters: set[str]) -> dict:
    """Drop settings another sampler's group node left (``sampler: {_target_: ...RandomSampler}`` over TPE's)."""
    from sweeper.config_store import SAMPLER_NODES

    inherited = {(k, repr(v)) for node in SAMPLER_NODES.values() for k, v in node.items()}
    kept = {}
    for key, value in spec.items():
        if key.startswith("_") or key in parameters:
            kept[key] = value
        elif (key, repr(value)) not in inherited:
            name = str(_target(spec)).rsplit(".", 1)[-1]
            raise ConfigError(
                f"hydra.sweeper.sampler.{key}: {name} takes no {key}; its settings: {', '.join(sorted(parameters))}"
                " (pick a sampler with hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|qmc|grid|gp)"
            )
    return kept


def _parameters(target: str | None) -> set[str]:
    """The constructor arguments of a sampler class named by ``_target_`` (none for an unknown one)."""
    try:
        return set(inspect.signature(get_object(target)).parameters)
    except Exception:
        return set()  # an unknown target: _build reports it


def _claim_session(study: optuna.Study, storage: BaseStorage) -> int:
    """This controller's session number in the study: 0 for the first ever, counted under the study lock."""
    with study_lock(storage, study.study_name):
        session = int(study.user_attrs.get(SESSIONS_ATTR, 0))
        study.set_user_attr(SESSIONS_ATTR, session + 1)
    return session


def grid_points(spec) -> int | None:
    """How many points a GridSampler's grid has (None for other samplers): a grid study runs each once."""
    if "GridSampler" not in str(_target(spec)):
        return None
    space = spec.get("search_space") or {}
    return math.prod(len(values) for values in space.values())


def create_study(cfg: SweeperConfig, storage: BaseStorage) -> optuna.Study:
    """Create the study, or load it when it exists with the same directions; seed its sampler for this session."""
    directions = cfg.directions()
    if directions is None:
        raise ConfigError("hydra.sweeper.direction: must be set (the controller takes it from the objective)")
    if "GridSampler" in str(_target(cfg.sampler)) and "search_space" not in cfg.sampler:
        raise ConfigError("hydra.sweeper.sampler: GridSampler needs search_space: {param: [values, ...]}")
    sampler = _build(_sampler_spec(cfg.sampler, cfg.study_name, 0), "sampler", optuna.samplers.BaseSampler, SAMPLERS)
    pruner = _build(cfg.pruner, "pruner", optuna.pruners.BasePruner, PRUNERS)
    if len(directions) > 1 and isinstance(sampler, optuna.samplers.CmaEsSampler):
        raise ConfigError("hydra.sweeper.sampler: CmaEsSampler is single-objective; use TPE, GP or NSGAII")
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.study_name,
        sampler=sampler,
        pruner=pruner,
        directions=directions,
        load_if_exists=True,
    )
    found = [d.name.lower() for d in study.directions]
    if found != directions:
        raise ConfigError(
            f"hydra.sweeper.direction: study {cfg.study_name!r} already exists with direction {found}, "
            f"not {directions}. Use the same direction or a new hydra.sweeper.study_name."
        )
    session = _claim_session(study, storage)
    if session > 0:
        if isinstance(cfg.sampler, optuna.samplers.BaseSampler):
            study.sampler.reseed_rng()
        else:
            spec = _sampler_spec(cfg.sampler, cfg.study_name, session)
            study.sampler = _build(spec, "sampler", optuna.samplers.BaseSampler, SAMPLERS)
    log.info("sampler %s, session %d of study %r", type(study.sampler).__name__, session, study.study_name)
    return study


# ------------------------------------------------------------------ liveness
def touch_heartbeat(study: optuna.Study, trial: optuna.Trial | FrozenTrial, storage: BaseStorage | None = None) -> None:
    """Record that ``trial`` is alive: Optuna's heartbeat where the storage has one, else a user attr."""
    storage = storage or study._storage
    if supports_heartbeat(storage):
        storage.record_heartbeat(trial._trial_id)
    else:
        # Through the study's storage, so a cached storage stays coherent.
        study._storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())


class Heartbeat:
    """A daemon thread that touches the heartbeat of this controller's RUNNING trials every interval."""

    def __init__(self, study: optuna.Study, storage: BaseStorage, interval: float):
        self.study, self.storage, self.interval = study, storage, interval
        self._trials: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_running(self, trials: Iterable) -> None:
        with self._lock:
            self._trials = list(trials)

    def beat(self) -> None:
        with self._lock:
            trials = list(self._trials)
        for trial in trials:
            try:
                touch_heartbeat(self.study, trial, self.storage)
            except UpdateFinishedTrialError:
                pass  # told between the snapshot and now
            except Exception as exc:  # a storage hiccup must not kill the thread
                log.warning("heartbeat of trial %d failed: %s", trial.number, exc)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.interval)


# ------------------------------------------------------------------ recovery
def _stale_trials(study: optuna.Study, grace_period: float) -> list[FrozenTrial]:
    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if supports_heartbeat(storage):
        # Optuna's own test, on the database clock and the storage's grace period...
        stale_ids = set(storage._get_stale_trial_ids(study._study_id))
        # ...which never finds a trial whose controller died before its first heartbeat: judge those by their start.
        beating = _trials_with_heartbeat(storage, [t._trial_id for t in running])
        now = time.time()
        for trial in running:
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            if trial._trial_id not in beating and now - started > grace_period:
                stale_ids.add(trial._trial_id)
        return [t for t in running if t._trial_id in stale_ids]
    now = time.time()
    stale = []
    for trial in running:
        last = trial.user_attrs.get("heartbeat")
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()  # died before its first heartbeat
        if last is not None and now - float(last) > grace_period:
            stale.append(trial)
    return stale


def _trials_with_heartbeat(storage: BaseStorage, trial_ids: list[int]) -> set[int]:
    """Which of these trials have a heartbeat row in an RDB storage (Optuna keeps them in their own table)."""
    if not trial_ids:
        return set()
    from optuna.storages._rdb import models

    session = unwrap_storage(storage).scoped_session()
    try:
        rows = session.query(models.TrialHeartbeatModel.trial_id).filter(
            models.TrialHeartbeatModel.trial_id.in_(trial_ids)
        )
        return {row[0] for row in rows}
    finally:
        session.close()


def _fail_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    storage = study._storage
    try:
        # Marked before FAIL: a finished trial's attributes are read-only.
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", STALE_REASON)
        storage.set_trial_user_attr(trial._trial_id, "requeued", True)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass  # another controller finished it meanwhile


def _requeue_pending(study: optuna.Study) -> list[int]:
    """Enqueue the retry of every failed trial marked ``requeued`` that has none yet; safe to run again after a crash.

    Stale trials and failures the controller retries are both marked before
    they are failed, so a controller killed between the mark and the enqueue
    leaves the retry to whichever controller recovers next.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    handled = []
    for trial in trials:
        pending = trial.state == TrialState.FAIL and trial.user_attrs.get("requeued")
        if pending and trial.number not in retried:
            attrs = {"retry_of": trial.number}
            attempt = trial.user_attrs.get("retry_attempt", trial.user_attrs.get("attempt"))
            if attempt is not None:  # a stale retry keeps the failure-retry count it had
                attrs["attempt"] = attempt
            study.enqueue_trial(trial.params, user_attrs=attrs)
            handled.append(trial.number)
    return handled


def requeue_failed(study: optuna.Study, storage: BaseStorage, lock_path: Path | None = None) -> list[int]:
    """Enqueue the pending retries (see ``_requeue_pending``) under the study lock; return the retried numbers."""
    with study_lock(storage, study.study_name, lock_path):
        return _requeue_pending(study)


def recover_stale_trials(
    study: optuna.Study, storage: BaseStorage, grace_period: int, lock_path: Path | None = None
) -> list[int]:
    """Fail the trials a dead controller left RUNNING and re-queue each once; return their numbers.

    Not ``optuna.storages.fail_stale_trials``: it fails first, and a failed
    trial can no longer be marked ``requeued`` (which keeps it out of the
    budget). The stale test is the same: Optuna's heartbeat where the storage
    has one, the ``heartbeat`` user attr (or the start time) elsewhere.
    """
    with study_lock(storage, study.study_name, lock_path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for trial in _stale_trials(study, grace_period):
                _fail_stale(study, trial)
        return _requeue_pending(study)
