"""The sweeper's Hydra config groups, in the official Optuna sweeper plugin's shapes.

``hydra/sweeper=lora`` (the default) and its alias ``hydra/sweeper=optuna``
select this sweeper; ``hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|motpe|qmc|grid|gp``
picks a sampler that starts from that sampler's settings, so
``hydra.sweeper.sampler.n_startup_trials=5`` needs no ``+``, as with the plugin.

The sweeper node is a plain mapping, not the SweeperConfig dataclass: a key Hydra's
own schema rejected would be reported by Hydra with a traceback hint and exit 1;
here SweeperConfig checks it when the sweep starts, names the nearest valid key
and exits 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.core.config_store import ConfigStore

from sweeper.config import SweeperConfig

_TPE: dict[str, Any] = {
    "_target_": "optuna.samplers.TPESampler",
    "seed": 0,
    "consider_prior": None,
    "prior_weight": None,
    "consider_magic_clip": None,
    "consider_endpoints": None,
    "n_startup_trials": 10,
    "n_ei_candidates": 24,
    "multivariate": None,
    "warn_independent_sampling": None,
}

# Each sampler's settings as the plugin's config.py lists them, limited to those the
# installed Optuna still takes. Seeds are 0 (the plugin: none) so a study is reproducible.
SAMPLER_NODES: dict[str, dict[str, Any]] = {
    "tpe": _TPE,
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
    "cmaes": {
        "_target_": "optuna.samplers.CmaEsSampler",
        "seed": 0,
        "x0": None,
        "sigma0": None,
        "n_startup_trials": 1,
        "independent_sampler": None,
        "warn_independent_sampling": True,
        "consider_pruned_trials": False,
        "restart_strategy": None,
        "inc_popsize": -1,
        "use_separable_cma": False,
        "source_trials": None,
    },
    "nsgaii": {
        "_target_": "optuna.samplers.NSGAIISampler",
        "seed": 0,
        "population_size": 50,
        "mutation_prob": None,
        "crossover_prob": 0.9,
        "swapping_prob": 0.5,
        "constraints_func": None,
    },
    # Optuna 4 removed MOTPESampler; TPESampler optimizes several objectives itself.
    # Its n_ehvi_candidates is accepted and, left at its default, dropped (TPESampler has no such setting).
    "motpe": {**_TPE, "n_ehvi_candidates": 24},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": 0, "qmc_type": "sobol", "scramble": False},
    # The grid is built from hydra.sweeper.params when the sweep starts (the plugin's `_partial_: true`).
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": 0},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": 0, "n_startup_trials": 10},
}


def sweeper_node() -> dict[str, Any]:
    """SweeperConfig's defaults as a plain mapping, with the sampler chosen from its group (TPE)."""
    node = {f.name: _default(f) for f in dataclasses.fields(SweeperConfig)}
    node.pop("sampler")  # filled by the hydra/sweeper/sampler group
    return {"defaults": [{"sampler": "tpe"}], **node}


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def register_sweeper_configs() -> None:
    cs = ConfigStore.instance()
    for name in ("lora", "optuna"):
        cs.store(group="hydra/sweeper", name=name, node=sweeper_node(), provider="lora_sweeper")
    for name, node in SAMPLER_NODES.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="lora_sweeper")
