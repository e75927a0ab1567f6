"""Typed config of the sweeper (``hydra.sweeper``), checked when the sweep starts."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from train.errors import ConfigError


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"hydra.sweeper.{key}: {message}")


@dataclass
class ConditionalSpace:
    # Sample `params` only in trials where every key of `when` took one of its listed values.
    when: dict[str, list[Any]] = field(default_factory=dict)
    params: dict[str, Any] | None = field(default_factory=dict)
    # The plugin's deprecated form of params: {key: {type: int|float|categorical, low, high, step, log, choices}}.
    search_space: dict[str, Any] | None = None
    # The plugin's hook: "module.function" called as function(cfg, trial) after the params are sampled;
    # the params it suggests are passed to the trial as `name=value` overrides.
    custom_search_space: str | None = None


@dataclass
class FaultInjection:
    # For tests: make trial number `trial` fail with `kind` (oom | exit | nan | error) at training step `at_step`.
    trial: int | None = None
    kind: str = "oom"
    at_step: int = 1


@dataclass
class SyntheticTrial:
    # For tests and bench/ that measure the sweep machinery: each trial sleeps `seconds` in `steps`
    # reports of a value computed from its params instead of training. Named as such wherever used.
    seconds: float = 1.0
    steps: int = 4

    def __post_init__(self) -> None:
        _require(self.seconds >= 0, "synthetic_trial.seconds", f"must be >= 0, got {self.seconds}")
        _require(self.steps >= 1, "synthetic_trial.steps", f"must be >= 1, got {self.steps}")


@dataclass
class PromoteConfig:
    """How ``python -m sweeper promote`` picks one trial and where it puts the file."""

    # Each study's promotions go to <registry>/<study_name>/.
    registry: str = "promoted"
    # Single objective: the best value. Multi-objective (or to override that): either
    # `weights` {metric: weight}, the largest weighted sum wins (give a minimized metric a negative weight),
    # or `metric`, the best value of that metric in `metric_direction` (null: its objective's direction).
    # Dicts are set on the command line as Hydra adds keys: ++hydra.sweeper.promote.weights={clip_t:1.0}
    weights: dict[str, float] = field(default_factory=dict)
    metric: str | None = None
    metric_direction: str | None = None
    # Only trials with every `floors` metric >= its value and every `ceilings` metric <= its value qualify.
    floors: dict[str, float] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)
    # Log the promoted file as a W&B artifact (type lora, aliases best and production) with the logger's settings.
    wandb: bool = True

    def __post_init__(self) -> None:
        _require(not (self.weights and self.metric), "promote", "set either weights or metric, not both")
        _require(
            self.metric_direction in (None, "maximize", "minimize"),
            "promote.metric_direction",
            f"must be maximize, minimize or null, got {self.metric_direction!r}",
        )
        _require(bool(str(self.registry).strip()), "promote.registry", "must be a folder path")


@dataclass
class RayConfig:
    """``hydra.sweeper.backend=ray``: one Ray actor per slot on the cluster at ``address``."""

    # null: RAY_ADDRESS, else a Ray instance started on this machine for the sweep.
    address: str | None = None
    # What each slot's actor asks of a node; null GPUs: 1 / trials_per_gpu on a cluster with GPUs, else 0.
    num_gpus_per_slot: float | None = None
    num_cpus_per_slot: float = 1.0
    # Custom resources per slot, e.g. {slot: 1} (null, not {}: so the command line can set a mapping without ++).
    resources: dict[str, float] | None = None
    # null: as many slots as the cluster has GPUs x trials_per_gpu (or of `resources`), else cpu_slots.
    max_slots: int | None = None
    max_restarts: int = 3  # an actor lost with its node is recreated on another node this many times
    runtime_env: dict[str, Any] | None = None
    threads_per_slot: int | None = None  # torch threads in each actor (null: torch's default)
    start_timeout: float = 300.0  # seconds for every slot's actor to find a node

    def __post_init__(self) -> None:
        _require(self.max_slots is None or self.max_slots >= 1, "ray.max_slots", "must be >= 1 or null")
        _require(self.max_restarts >= 0, "ray.max_restarts", "must be >= 0")
        _require(
            self.num_gpus_per_slot is None or self.num_gpus_per_slot >= 0, "ray.num_gpus_per_slot", "must be >= 0"
        )
        _require(self.start_timeout > 0, "ray.start_timeout", "must be > 0")


@dataclass
class SweeperConfig:
    _target_: str = "hydra_plugins.lora_sweeper.LoRASweeper"
    # Sampler and pruner stay config here; create_study instantiates them with clear errors.
    _recursive_: bool = False
    # null: a new study with a generated name on every run, as Optuna and the plugin do (no resume).
    study_name: str | None = "lora-sweep"
    # null: sqlite in the sweep dir. Also journal:///path.log, redis://host:6379/0, postgresql://..., mysql://...
    storage: str | None = None
    # null: workers open `storage` too. At hundreds of workers: grpc://host:port (Optuna's storage proxy,
    # `python -m sweeper storage-proxy`) or a PgBouncer URL, so they share a few database connections.
    worker_storage: str | None = None
    # null: evaluate.objective.direction (the trial value is that objective). A list for multi-objective.
    direction: Any = None
    # Multi-objective: the evaluation metric behind each direction, e.g. [clip_t, aesthetic].
    objectives: list[str] | None = None
    n_trials: int = 8  # total for the study, across processes and hosts
    timeout: float | None = None  # seconds for this controller
    gpu_hours: float | None = None  # budget of slot time spent by the study
    # Slots: gpus [0, 2] (null: all visible), trials_per_gpu; cpu_slots when there is no GPU.
    gpus: list[int] | None = None
    trials_per_gpu: int = 1
    cpu_slots: int = 2
    # Where the slots run: local (worker processes on this machine) or ray (actors on a Ray cluster).
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    # The plugin's setting: at most this many trials at once (null: one per slot). More than the slots: the slots.
    n_jobs: int | None = None
    max_retries: int = 0  # re-runs of a failed configuration
    # The official Optuna sweeper's setting: past this share of failed trials the sweep stops asking, lets the
    # running ones finish and exits 1. Its default there is 0.0 (any failure); long GPU sweeps meet the odd OOM.
    max_failure_rate: float = 0.5
    # Which metric each trial reports while it trains: "objective" or "val_loss".
    report: str = "objective"
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    params: dict[str, Any] | None = field(default_factory=dict)
    # The plugin's deprecated form of params: {key: {type: int|float|categorical, low, high, step, log, choices}}.
    search_space: dict[str, Any] | None = None
    # The plugin's hook: "module.function" called as function(cfg, trial) after the params are sampled;
    # the params it suggests are passed to the trial as `name=value` overrides.
    custom_search_space: str | None = None
    conditional: list[ConditionalSpace] = field(default_factory=list)
    # Derived values: key -> arithmetic over sampled keys, e.g. {network.alpha: "network.dim * _alpha_ratio"}.
    derived: dict[str, str] = field(default_factory=dict)
    # Known-good configurations to run first: a list of {key: value}.
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    # A finished sweep's dir or storage URL: its best warm_start_top configurations run first (after enqueue).
    warm_start: str | None = None
    warm_start_study: str | None = None  # the source's study, where it holds several
    warm_start_top: int = 4
    fault_injection: list[FaultInjection] = field(default_factory=list)
    # {seconds, steps} (see SyntheticTrial); a plain mapping, so `hydra.sweeper.synthetic_trial={...}` can set it.
    synthetic_trial: Any = None
    # Seconds without a heartbeat before a RUNNING trial counts as dead (stale-trial check).
    heartbeat_interval: int = 10
    grace_period: int = 30
    promote: PromoteConfig = field(default_factory=PromoteConfig)

    def __post_init__(self) -> None:
        _require(self.n_trials >= 1, "n_trials", f"must be >= 1, got {self.n_trials}")
        _require(
            not str(self.storage or "").lower().startswith("grpc://"),
            "storage",
            "a grpc:// proxy is for the workers (hydra.sweeper.worker_storage=grpc://...); the controller's study "
            "lock and heartbeats need the database URL itself",
        )
        _require(self.trials_per_gpu >= 1, "trials_per_gpu", "must be >= 1")
        _require(self.cpu_slots >= 1, "cpu_slots", "must be >= 1")
        _require(self.backend in ("local", "ray"), "backend", f"must be local or ray, got {self.backend!r}")
        _require(self.max_retries >= 0, "max_retries", "must be >= 0")
        _require(0 <= self.max_failure_rate <= 1, "max_failure_rate", f"must be in [0, 1], got {self.max_failure_rate}")
        _require(self.report in ("objective", "val_loss"), "report", "must be objective or val_loss")
        _require(self.warm_start_top >= 1, "warm_start_top", f"must be >= 1, got {self.warm_start_top}")
        _require(self.n_jobs is None or self.n_jobs >= 1, "n_jobs", f"must be >= 1 or null, got {self.n_jobs}")
        directions = self.directions() or []
        for d in directions:
            _require(d in ("maximize", "minimize"), "direction", f"must be maximize or minimize, got {d!r}")
        if len(directions) > 1:
            _require(
                self.objectives is not None and len(self.objectives) == len(directions),
                "objectives",
                f"name one evaluation metric per direction ({len(directions)}), e.g. [clip_t, aesthetic]",
            )
        _require(self.timeout is None or self.timeout > 0, "timeout", "must be > 0 or null")
        _require(self.gpu_hours is None or self.gpu_hours > 0, "gpu_hours", "must be > 0 or null")
        if self.synthetic_trial is not None and not isinstance(self.synthetic_trial, SyntheticTrial):
            spec = self.synthetic_trial
            _require(isinstance(spec, dict), "synthetic_trial", "must be null or {seconds: S, steps: N}")
            unknown = sorted(set(spec) - {"seconds", "steps"})
            _require(not unknown, "synthetic_trial", f"unknown key(s) {unknown}; it takes seconds and steps")
            self.synthetic_trial = SyntheticTrial(**spec)

    def directions(self) -> list[str] | None:
        """The study's directions as a list; None until taken from the objective (direction: null)."""
        if self.direction is None:
            return None
        return list(self.direction) if isinstance(self.direction, list | tuple) else [self.direction]

    @property
    def multi_objective(self) -> bool:
        return len(self.directions() or []) > 1


def check_sweeper_keys(kwargs: dict[str, Any]) -> None:
    """Unknown ``hydra.sweeper`` keys: one message with the valid keys and the nearest match."""
    valid = sorted(f.name for f in dataclasses.fields(SweeperConfig) if not f.name.startswith("_"))
    for key in kwargs:
        if key.startswith("_") or key in valid:
            continue
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"hydra.sweeper.{key}: unknown key; {hint}valid keys: {', '.join(valid)}")


def check_sweeper_arguments(argv: list[str]) -> None:
    """Unknown ``hydra.sweeper`` keys on the command line, before Hydra composes (it would exit 1 with a hint).

    ``+hydra.sweeper.x=...`` and keys in YAML reach SweeperConfig, which gives the same message.
    """
    from sweeper.config_store import SAMPLER_NODES

    sampler = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra/sweeper/sampler=")), "tpe")
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg or not key.startswith("hydra.sweeper."):
            continue
        parts = key.split(".")
        check_sweeper_keys({parts[2]: None})
        known = {k for node in SAMPLER_NODES.values() for k in node}
        if parts[2] == "sampler" and len(parts) == 4 and parts[3] not in known:
            settings = sorted(k for k in SAMPLER_NODES.get(sampler, {}) if not k.startswith("_"))
            near = difflib.get_close_matches(parts[3], settings, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{key}: unknown sampler setting; {hint}{sampler} takes: {', '.join(settings)}")
