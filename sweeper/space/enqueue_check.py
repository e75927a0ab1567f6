"""Check `hydra.sweeper.enqueue` against the search space before any trial runs.

Optuna itself only warns (and samples something else) when an enqueued value is outside its
distribution, so a typo in a known-good config would silently run a different trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from train.errors import ConfigError

if TYPE_CHECKING:
    from sweeper.space.search_space import SearchSpace


def check_enqueue(
    space: SearchSpace, enqueue: Sequence[Mapping[str, Any]] | None, where: str = "hydra.sweeper.enqueue"
) -> None:
    """Each entry names only keys of `space`, with values inside their distributions; errors name ``where[i]``."""
    if OmegaConf.is_config(enqueue):
        enqueue = OmegaConf.to_container(enqueue, resolve=True)
    if not enqueue:
        return
    if isinstance(enqueue, (str, Mapping)) or not isinstance(enqueue, Sequence):
        raise ConfigError(f"{where}: must be a list of {{key: value}} mappings")
    for index, entry in enumerate(enqueue):
        item = f"{where}[{index}]"
        if OmegaConf.is_config(entry):
            entry = OmegaConf.to_container(entry, resolve=True)
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{item}: must be a mapping of key: value, got {entry!r}")
        entry = {str(k): v for k, v in entry.items()}
        for key, value in entry.items():
            _check_value(space, entry, key, value, f"{item}.{key}")


def _check_value(space: SearchSpace, entry: dict[str, Any], key: str, value: Any, name: str) -> None:
    if key in space.derived:
        raise ConfigError(f"{name}: {key} is derived ({space.derived[key]!r}); enqueue its inputs instead")
    if key in space.fixed:
        if value != space.fixed_values[key]:
            raise ConfigError(f"{name}: {key} is fixed to {space.fixed[key]} by hydra.sweeper.params, not searched")
        return
    conditional = [(when, dists) for when, dists in space.conditional if key in dists]
    if key not in space.distributions and not conditional:
        searched = sorted(set(space.distributions) | {k for _, d in space.conditional for k in d})
        raise ConfigError(f"{name}: {key} is not in the search space; searched keys: {', '.join(searched)}")
    dist = space.active_distribution(key, entry)
    if dist is None:
        conditions = space.conditions_for(key)
        raise ConfigError(f"{name}: {key} is only searched when {conditions}; set that in this entry too")
    problem = _outside(dist, value)
    if problem:
        raise ConfigError(f"{name}: {problem}")


def _outside(dist: BaseDistribution, value: Any) -> str | None:
    """Why `value` cannot come from `dist`, or None when it can."""
    if isinstance(dist, CategoricalDistribution):
        if any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in dist.choices):
            return None
        return f"{value!r} is not one of the choices {list(dist.choices)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if isinstance(dist, IntDistribution) and not float(value).is_integer():
        return f"{value!r} is not an integer"
    if not dist.low <= value <= dist.high:
        return f"{value!r} is outside [{dist.low}, {dist.high}]"
    if dist.step and not _on_grid(value, dist.low, dist.step):
        return f"{value!r} is not on the grid {dist.low} + k * {dist.step}"
    return None


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-6
