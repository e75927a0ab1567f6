"""Optimizers built from ``optimizer.factory`` (``_target_`` + ``_partial_: true``).

The factory holds the optimizer's own options (betas, weight_decay, ...); the
learning rate comes from ``optimizer.learning_rate`` and the per-group lrs
from ``unet_lr`` / ``text_encoder_lr``. A typo'd target, a missing package or
an option the optimizer does not take is a ConfigError naming the key, raised
by ``check_optimizer`` before any model loads.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train.errors import ConfigError

# Names of conf/optimizer/*.yaml, chosen on the command line as optimizer=<name>.
SHIPPED_OPTIMIZERS = (
    "adamw",
    "adamw8bit",
    "lion",
    "lion8bit",
    "prodigy",
    "dadapt_adam",
    "adafactor",
    "sgd_nesterov",
)


def locate(path: str) -> Any:
    """Import "package.module.Name"; ImportError/AttributeError with a one-line reason if it fails."""
    parts = path.split(".")
    if not path or not all(part.isidentifier() for part in parts):
        raise ImportError(f"{path!r} is not a dotted import path")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Only the path itself being absent means "look one level up"; a missing
            # dependency of an installed package is the real reason and propagates.
            if error.name is None or not (module_name + ".").startswith(error.name + "."):
                raise
            if split == 1:
                raise ImportError(f"no module named {parts[0]!r}; is its package installed?") from None
            continue
        for depth, attribute in enumerate(parts[split:], start=split):
            if not hasattr(obj, attribute):
                raise AttributeError(f"{'.'.join(parts[:depth])!r} has no attribute {attribute!r}")
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"cannot import {path!r}")


def instantiate_factory(
    factory_cfg: Any, group: str, shipped: Iterable[str], field: str = "factory"
) -> functools.partial:
    """Import ``_target_`` and return it as a partial with the config's options (lists as tuples)."""
    key = f"{group}.{field}._target_"
    try:
        if isinstance(factory_cfg, dict):
            factory_cfg = OmegaConf.create(factory_cfg)
        target = factory_cfg.get("_target_") if isinstance(factory_cfg, DictConfig) else None
        if not isinstance(target, str):
            raise ConfigError(f"{key}: {group}.{field} needs a _target_ naming a class or function")
        choices = f"Shipped {group} configs: {', '.join(shipped)} (choose with {group}=<name>)"
        try:
            target_obj = locate(target)
        except Exception as error:
            raise ConfigError(f"{key}: cannot import {target!r} ({error}). {choices}") from None
        if not callable(target_obj):
            raise ConfigError(f"{key}: {target!r} is a {type(target_obj).__name__}, not a class. {choices}")
        factory = instantiate(factory_cfg, _partial_=True, _convert_="all")
    except (InstantiationException, OmegaConfBaseException) as error:
        raise ConfigError(f"{group}.{field}: {error}") from None
    # kohya passes tuples (betas=(0.9, 0.999)); YAML lists would also show up as lists in ss_optimizer.
    options = {name: tuple(value) if isinstance(value, list) else value for name, value in factory.keywords.items()}
    return functools.partial(factory.func, *factory.args, **options)


def _wrong_kind(default: Any, value: Any) -> bool:
    """True when a value plainly cannot stand in for a parameter's default (a string for a number...)."""
    if isinstance(default, bool):
        return not isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, bool) or not isinstance(value, (int, float))
    if isinstance(default, tuple):
        return not isinstance(value, tuple)
    return False


def check_factory_call(
    factory: functools.partial, group: str, *args: Any, field: str = "factory", **kwargs: Any
) -> None:
    """Raise a ConfigError naming any option the target does not accept, before calling it."""
    try:
        signature = inspect.signature(factory.func)
    except (TypeError, ValueError):
        return  # no introspectable signature: the call itself will tell
    parameters = signature.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    name = getattr(factory.func, "__qualname__", str(factory.func))
    for option, value in factory.keywords.items():
        if option not in parameters:
            if accepts_any:
                continue
            reserved = ("self", "params", "optimizer", "num_training_steps", "cfg")
            takes = ", ".join(p for p in parameters if p not in reserved)
            raise ConfigError(f"{group}.{field}.{option}: {name} has no option {option!r}; it takes: {takes}")
        default = parameters[option].default
        if default is not inspect.Parameter.empty and _wrong_kind(default, value):
            raise ConfigError(f"{group}.{field}.{option}: expected a value like {default!r}, got {value!r}")
    try:
        signature.bind(*factory.args, *args, **{**factory.keywords, **kwargs})
    except TypeError as error:
        raise ConfigError(f"{group}.{field}: cannot call {name}: {error}") from None


def build_optimizer(cfg: Any, param_groups: list[dict]) -> torch.optim.Optimizer:
    """Build the optimizer over ``param_groups`` with ``lr=cfg.learning_rate`` as the default lr."""
    factory = instantiate_factory(cfg.factory, "optimizer", SHIPPED_OPTIMIZERS)
    for reserved, instead in (("lr", "optimizer.learning_rate"), ("params", "the trainer")):
        if reserved in factory.keywords:
            raise ConfigError(f"optimizer.factory.{reserved}: remove it; {instead} sets it")
    learning_rate = float(cfg.learning_rate)
    check_factory_call(factory, "optimizer", param_groups, lr=learning_rate)
    try:
        return factory(param_groups, lr=learning_rate)
    except (TypeError, ValueError) as error:
        # Optimizers validate their options in __init__ (e.g. "Invalid beta parameter").
        raise ConfigError(f"optimizer.factory: {factory.func.__qualname__} rejected its options: {error}") from None


def check_optimizer(cfg: Any) -> None:
    """Pre-flight: import the target and build it over one dummy parameter (cheap, no model needed)."""
    dummy = torch.zeros(1, requires_grad=True)
    build_optimizer(cfg, [{"params": [dummy], "lr": float(cfg.learning_rate), "name": "preflight"}])


def describe_optimizer(cfg: Any) -> str:
    """kohya's ss_optimizer string: "module.Class(key=value,...)" with the factory's options."""
    factory = instantiate_factory(cfg.factory, "optimizer", SHIPPED_OPTIMIZERS)
    cls = factory.func
    name = f"{cls.__module__}.{cls.__name__}"
    if not factory.keywords:
        return name
    options = ",".join(f"{key}={value}" for key, value in factory.keywords.items())
    return f"{name}({options})"


def param_groups_for(unet_params: Iterable, te_params: Iterable, cfg: Any) -> list[dict]:
    """One group per trained model, lr = unet_lr / text_encoder_lr or else learning_rate; empty ones dropped."""

    def lr_or_default(value: float | None) -> float:
        return float(cfg.learning_rate if value is None else value)

    groups = [
        {"params": list(unet_params), "lr": lr_or_default(getattr(cfg, "unet_lr", None)), "name": "unet"},
        {"params": list(te_params), "lr": lr_or_default(getattr(cfg, "text_encoder_lr", None)), "name": "text_encoder"},
    ]
    return [group for group in groups if group["params"]]
