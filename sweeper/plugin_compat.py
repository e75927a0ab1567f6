"""What the official Optuna sweeper plugin does with a config, done here the same way.

- A plain ``key=value`` on the command line for a key the config searches takes
  that key out of the search: every trial gets the value (the plugin's
  ``fixed_params``).
- The deprecated ``search_space`` mapping becomes ``params`` when ``params`` is empty.
- ``hydra/sweeper=optuna`` runs this sweeper; where its defaults differ from
  the plugin's and the config leaves them, one line says so at start.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType

from sweeper.config import SweeperConfig
from sweeper.space.param_syntax import format_value
from train.errors import ConfigError

log = logging.getLogger(__name__)


def fix_searched_keys(cfg: SweeperConfig, base: list[str]) -> list[str]:
    """Move command-line values of searched keys into ``cfg.params`` as fixed values; the rest stay in ``base``."""
    params = dict(cfg.params or {})
    searched = set(params) | {k for block in cfg.conditional for k in block.params} | set(cfg.derived)
    kept = []
    for override in OverridesParser.create().parse_overrides(base):
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or override.package is not None or key not in searched:
            kept.append(override.input_line)
            continue
        value = override.get_value_element_as_str()
        was = params.get(key) or cfg.derived.get(key) or "a conditional block"
        log.info("%s=%s on the command line: fixed, not searched (the config searched %s)", key, value, was)
        params[key] = value
        cfg.derived.pop(key, None)
        for block in cfg.conditional:
            block.params.pop(key, None)
    cfg.params = params
    cfg.conditional = [block for block in cfg.conditional if block.params]
    return kept


def params_from_search_space(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``hydra.sweeper.search_space`` (the plugin's deprecated form) as ``params`` sweep text."""
    space = kwargs.get("search_space")
    if not space:
        return kwargs
    if kwargs.get("params"):
        log.warning("both hydra.sweeper.params and hydra.sweeper.search_space are set: params is used")
        return {**kwargs, "search_space": None}
    log.warning("hydra.sweeper.search_space is deprecated (as in the official plugin): write hydra.sweeper.params")
    params = {str(key): _sweep_text(str(key), spec) for key, spec in space.items()}
    return {**kwargs, "params": params, "search_space": None}


def _sweep_text(key: str, spec: Any) -> str:
    where = f"hydra.sweeper.search_space.{key}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: must be {{type: int|float|categorical, ...}}")
    kind = str(spec["type"]).rsplit(".", 1)[-1]
    if kind == "categorical":
        return f"choice({','.join(format_value(c) for c in spec.get('choices') or [])})"
    if kind not in ("int", "float") or spec.get("low") is None or spec.get("high") is None:
        raise ConfigError(f"{where}: type must be int, float or categorical; int and float need low and high")
    cast = int if kind == "int" else float
    low, high, step = cast(spec["low"]), cast(spec["high"]), spec.get("step")
    if spec.get("log"):
        inner = f"interval({low!r}, {high!r})"
        return f"tag(log, {'int(' + inner + ')' if kind == 'int' else inner})"
    if step is not None:
        return f"range({low!r}, {high!r}, step={cast(step)!r})"
    return f"int(interval({low}, {high}))" if kind == "int" else f"interval({low!r}, {high!r})"


# Where hydra/sweeper=optuna differs from the plugin when the config leaves the key: (our default, note).
_DIFFERENCES = {
    "n_trials": (8, "n_trials 8 (plugin: 20)"),
    "n_jobs": (None, "n_jobs null: one trial per slot (plugin: 2)"),
    "max_failure_rate": (0.5, "max_failure_rate 0.5 (plugin: 0.0)"),
    "direction": (None, "direction from evaluate.objective.direction (plugin: minimize)"),
    "study_name": ("lora-sweep", "study_name lora-sweep, resumed by re-running (plugin: a new study each run)"),
}


def announce_differences(kwargs: dict[str, Any], choices: Any) -> None:
    """One line for ``hydra/sweeper=optuna`` users: the defaults in effect that the plugin sets otherwise."""
    sampler = choices.get("hydra/sweeper/sampler") if choices is not None else None
    if sampler == "motpe":
        log.warning("hydra/sweeper/sampler=motpe: Optuna 4 removed MOTPESampler; TPESampler (several objectives) runs")
    if choices is None or choices.get("hydra/sweeper") != "optuna":
        return
    notes = [note for key, (ours, note) in _DIFFERENCES.items() if kwargs.get(key, ours) == ours]
    if (kwargs.get("sampler") or {}).get("seed") == 0:
        notes.append("sampler seed 0 (plugin: unseeded)")
    if kwargs.get("pruner"):
        notes.append(f"pruner {str(kwargs['pruner'].get('_target_')).rsplit('.', 1)[-1]} (plugin: no pruning)")
    if notes:
        log.warning("hydra/sweeper=optuna runs this sweeper with defaults the official plugin sets otherwise: %s. "
                    "Set them in hydra.sweeper to choose.", "; ".join(notes))

