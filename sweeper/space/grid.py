"""The grid of ``hydra/sweeper/sampler=grid``: built from ``hydra.sweeper.params``, as the official plugin does.

The plugin's GridSampler node is a partial that gets its ``search_space`` at
run time: every choice, and each range's points ``low, low + step, ...`` below
its ``high`` (the plugin's ``_to_grid_sampler_choices``; a one-value range keeps
its value). Continuous intervals have no grid: one message names the key.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution

from sweeper.space.search_space import SearchSpace
from train.errors import ConfigError


def is_grid(spec: Any) -> bool:
    target = spec.get("_target_") if spec is not None and hasattr(spec, "get") else None
    return "GridSampler" in str(target)


def grid_choices(name: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if not dist.step or dist.log:
        raise ConfigError(
            f"hydra.sweeper.params.{name}: the grid sampler needs discrete values; "
            "use choice(...) or range(start, stop, step=...) instead of interval(...)"
        )
    count = int((dist.high - dist.low) // dist.step)
    return [dist.low + i * dist.step for i in range(count)] or [dist.low]


def with_grid(spec: Any, space: SearchSpace) -> Any:
    """The sampler spec, a grid sampler's ``search_space`` filled from ``space`` when the config leaves it out."""
    if not is_grid(spec):
        return spec
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    spec.pop("_partial_", None)
    if not spec.get("search_space"):
        dists = dict(space.distributions)
        for index, (_when, block) in enumerate(space.conditional):
            dists.update({space.param_name(index, key): dist for key, dist in block.items()})
        spec["search_space"] = {name: grid_choices(name, dist) for name, dist in dists.items()}
    return spec
