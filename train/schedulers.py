"""Learning-rate schedules, each called as ``fn(optimizer, num_training_steps, **options)``.

conf/scheduler/*.yaml name one of these with ``_target_`` + ``_partial_: true``;
the recipe calls ``build_scheduler``. Each one steps once per optimizer step.
``warmup_steps`` is a number of steps, or a float in (0, 1): a ratio of
``num_training_steps`` (kohya's lr_warmup_steps).
"""

from __future__ import annotations

import bisect
import contextvars
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from train.errors import ConfigError
from train.optimizers import check_factory_call, instantiate_factory

SHIPPED_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "piecewise",
)


def resolve_warmup_steps(warmup_steps: int | float, num_training_steps: int) -> int:
    """Steps of warmup: an int is a count, a float in (0, 1) a ratio of the run (floored, like kohya)."""
    key = "scheduler.factory.warmup_steps"
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, float)) or warmup_steps < 0:
        raise ConfigError(f"{key}: must be a step count >= 0 or a ratio in (0, 1), got {warmup_steps!r}")
    if isinstance(warmup_steps, float) and warmup_steps < 1:
        return int(warmup_steps * num_training_steps)
    if warmup_steps != int(warmup_steps):
        raise ConfigError(f"{key}: {warmup_steps} is neither a whole step count nor a ratio in (0, 1)")
    return int(warmup_steps)


def _check_training_steps(num_training_steps: int) -> None:
    if num_training_steps < 1:
        raise ConfigError(f"train.max_train_steps: the schedule needs at least 1 step, got {num_training_steps}")


# Set while the pre-flight checks a schedule's options: the diffusers schedule is then not
# built, so the check needs no diffusers import (seconds on 2 cores) before any model loads.
_checking_only = contextvars.ContextVar("checking_only", default=False)


def _diffusers_schedule(name: str) -> Callable[..., LRScheduler | None]:
    if _checking_only.get():
        return lambda *args, **kwargs: None
    from diffusers import optimization

    return getattr(optimization, name)


def constant(optimizer: Optimizer, num_training_steps: int) -> LRScheduler:
    _check_training_steps(num_training_steps)
    return _diffusers_schedule("get_constant_schedule")(optimizer)


def constant_with_warmup(optimizer: Optimizer, num_training_steps: int, warmup_steps: int | float = 0) -> LRScheduler:
    _check_training_steps(num_training_steps)
    return _diffusers_schedule("get_constant_schedule_with_warmup")(optimizer, resolve_warmup_steps(warmup_steps, num_training_steps))


def linear(optimizer: Optimizer, num_training_steps: int, warmup_steps: int | float = 0) -> LRScheduler:
    _check_training_steps(num_training_steps)
    warmup = resolve_warmup_steps(warmup_steps, num_training_steps)
    return _diffusers_schedule("get_linear_schedule_with_warmup")(optimizer, warmup, num_training_steps)


def cosine(
    optimizer: Optimizer, num_training_steps: int, warmup_steps: int | float = 0, num_cycles: float = 0.5
) -> LRScheduler:
    _check_training_steps(num_training_steps)
    if isinstance(num_cycles, bool) or not isinstance(num_cycles, (int, float)) or num_cycles <= 0:
        raise ConfigError(f"scheduler.factory.num_cycles: must be > 0, got {num_cycles!r}")
    warmup = resolve_warmup_steps(warmup_steps, num_training_steps)
    return _diffusers_schedule("get_cosine_schedule_with_warmup")(optimizer, warmup, num_training_steps, num_cycles=float(num_cycles))


def cosine_with_restarts(
    optimizer: Optimizer, num_training_steps: int, warmup_steps: int | float = 0, num_cycles: int = 1
) -> LRScheduler:
    _check_training_steps(num_training_steps)
    if isinstance(num_cycles, bool) or not isinstance(num_cycles, int) or num_cycles < 1:
        raise ConfigError(f"scheduler.factory.num_cycles: must be an integer >= 1, got {num_cycles!r}")
    warmup = resolve_warmup_steps(warmup_steps, num_training_steps)
    return _diffusers_schedule("get_cosine_with_hard_restarts_schedule_with_warmup")(optimizer, warmup, num_training_steps, num_cycles)


def polynomial(
    optimizer: Optimizer,
    num_training_steps: int,
    warmup_steps: int | float = 0,
    power: float = 1.0,
    lr_end: float = 1e-7,
) -> LRScheduler:
    _check_training_steps(num_training_steps)
    if isinstance(power, bool) or not isinstance(power, (int, float)) or power <= 0:
        raise ConfigError(f"scheduler.factory.power: must be > 0, got {power!r}")
    base_lr = optimizer.defaults.get("lr", 0.0)
    if isinstance(lr_end, bool) or not isinstance(lr_end, (int, float)) or not 0 <= lr_end < base_lr:
        raise ConfigError(
            f"scheduler.factory.lr_end: must be >= 0 and below optimizer.learning_rate ({base_lr}), got {lr_end!r}"
        )
    warmup = resolve_warmup_steps(warmup_steps, num_training_steps)
    return _diffusers_schedule("get_polynomial_decay_schedule_with_warmup")(
        optimizer, warmup, num_training_steps, lr_end=float(lr_end), power=float(power)
    )


def parse_piecewise_schedule(schedule: str) -> list[tuple[float, int | None]]:
    """Parse A1111's "5e-6:2000, 5e-7:10000, 5e-8" into [(lr, until_step), ..., (lr, None)].

    Each lr holds until its step (exclusive); steps must increase. The last
    entry may omit its step (open-ended); if it has one, its lr is kept after.
    """
    key = "scheduler.factory.schedule"
    if not isinstance(schedule, str) or not schedule.strip():
        raise ConfigError(f"{key}: give a string like '5e-6:2000, 5e-7:10000, 5e-8', got {schedule!r}")
    parts = [part.strip() for part in schedule.split(",")]
    entries: list[tuple[float, int | None]] = []
    for index, part in enumerate(parts):
        is_last = index == len(parts) - 1
        value_text, _, step_text = part.partition(":")
        if not part:
            raise ConfigError(f"{key}: entry {index + 1} is empty in {schedule!r}")
        try:
            value = float(value_text)
        except ValueError:
            raise ConfigError(f"{key}: {value_text.strip()!r} in {part!r} is not a learning rate") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{key}: learning rate {value_text.strip()!r} in {part!r} must be >= 0")
        if not step_text.strip():
            if ":" in part or not is_last:
                raise ConfigError(f"{key}: {part!r} needs 'lr:step'; only the last entry may omit its step")
            entries.append((value, None))
            continue
        try:
            step = int(step_text)
        except ValueError:
            raise ConfigError(f"{key}: step {step_text.strip()!r} in {part!r} is not a whole number") from None
        previous = entries[-1][1] if entries else 0
        if step <= previous:
            raise ConfigError(f"{key}: step {step} in {part!r} must be greater than {previous}")
        entries.append((value, step))
    return entries


def piecewise(optimizer: Optimizer, num_training_steps: int, schedule: str) -> LRScheduler:
    """Absolute learning rates from an A1111 string; each group keeps its ratio to optimizer.learning_rate."""
    _check_training_steps(num_training_steps)
    entries = parse_piecewise_schedule(schedule)
    base_lr = optimizer.defaults.get("lr") or 0.0
    if base_lr <= 0:
        raise ConfigError(
            "scheduler.factory.schedule: piecewise rates are scaled from optimizer.learning_rate, "
            f"which is {base_lr}; set it > 0"
        )
    boundaries = [step for _, step in entries if step is not None]
    values = [value for value, _ in entries]

    def scale(step: int) -> float:
        index = min(bisect.bisect_right(boundaries, step), len(values) - 1)
        return values[index] / base_lr

    return LambdaLR(optimizer, scale)


def build_scheduler(cfg: Any, optimizer: Optimizer, num_training_steps: int) -> LRScheduler:
    """Instantiate ``cfg.factory`` (a SchedulerConfig or its DictConfig) and call it."""
    factory = instantiate_factory(cfg.factory, "scheduler", SHIPPED_SCHEDULERS)
    check_factory_call(factory, "scheduler", optimizer, num_training_steps)
    return factory(optimizer, num_training_steps)


def check_scheduler(cfg: Any, learning_rate: float = 1.0, num_training_steps: int = 1000) -> None:
    """Pre-flight: build the schedule on a dummy optimizer, so a bad piecewise string fails before any model loads."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
    token = _checking_only.set(True)
    try:
        build_scheduler(cfg, dummy, num_training_steps)
    finally:
        _checking_only.reset(token)
