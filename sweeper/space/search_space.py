"""The search space of a sweep: `hydra.sweeper.params`, `conditional` and `derived`, sampled per Optuna trial.

A key that several conditional blocks search gets one Optuna parameter name per block
("optimizer.learning_rate|optimizer=lion"), so no sampler ever sees one name with two distributions.
Keys starting with "_" are virtual: sampled to feed derived expressions, never passed to the trainer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, is_dataclass
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper.space.enqueue_check import check_enqueue
from sweeper.space.expressions import Expression, compile_expression
from sweeper.space.param_syntax import distribution_from_override, format_value, parse_value
from train.errors import ConfigError

__all__ = ["SearchSpace", "check_enqueue", "distribution_from_override", "parse_search_space"]

Block = tuple[dict[str, list], dict[str, BaseDistribution]]
_MISSING = object()


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)  # top-level searched keys
    fixed: dict[str, str] = field(default_factory=dict)  # key -> override text, passed through as is
    conditional: list[Block] = field(default_factory=list)  # (when, distributions)
    derived: dict[str, str] = field(default_factory=dict)  # key -> expression

    def __post_init__(self) -> None:
        self.fixed_values = {key: parse_value(text) for key, text in self.fixed.items()}
        self._names = _conditional_param_names(self.conditional)
        self._expressions = _compile_derived(self)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active param of `trial`; {config key: value} without virtual keys."""
        return self._resolve(lambda key, name, dist: suggest(trial, name, dist))

    def values_from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Config values of an existing trial from its Optuna params (for retries and enqueued trials)."""
        return self._resolve(lambda key, name, dist: params.get(name, params.get(key, _MISSING)))

    def enqueue_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna params for `study.enqueue_trial` from config values, conditional keys under their Optuna names."""
        picked: dict[str, Any] = {}

        def pick(key: str, name: str, dist: BaseDistribution) -> Any:
            if key not in values:
                return _MISSING
            picked[name] = _coerce(dist, values[key])
            return picked[name]

        self._resolve(pick)
        return picked

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        """Hydra override strings for `values`; fixed params keep their text exactly as configured."""
        out = []
        for key, value in values.items():
            if is_virtual(key):
                continue
            fixed = self.fixed_values.get(key, _MISSING)
            same = key in self.fixed and type(value) is type(fixed) and value == fixed
            out.append(f"{key}={self.fixed[key] if same else format_value(value)}")
        return out

    def values_with(self, by_name: Mapping[str, Any], by_key: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Config values of one hypothetical trial: params from ``by_name`` (Optuna names), else ``by_key``,
        else each distribution's first value (its first choice, its low end)."""
        by_key = by_key or {}

        def pick(key: str, name: str, dist: BaseDistribution) -> Any:
            if name in by_name:
                return by_name[name]
            return by_key[key] if key in by_key else probe_points(dist)[0]

        return self._resolve(pick)

    def param_names(self) -> set[str]:
        """Every Optuna parameter name this space samples (top-level keys, conditional blocks' names)."""
        return set(self.distributions) | {name for block in self._names for name in block.values()}

    def param_name(self, block: int, key: str) -> str:
        """The Optuna parameter name of `key` in conditional block `block`."""
        return self._names[block][key]

    def active_distribution(self, key: str, values: Mapping[str, Any]) -> BaseDistribution | None:
        """The distribution `key` is sampled from given the other values, or None when no block enables it."""
        if key in self.distributions:
            return self.distributions[key]
        known = {**values, **self.fixed_values}
        for when, dists in self.conditional:
            if key in dists and when_matches(when, known):
                return dists[key]
        return None

    def conditions_for(self, key: str) -> str:
        """The `when`s under which a conditional key is searched, as text for messages."""
        return " or ".join(describe_when(when) for when, dists in self.conditional if key in dists)

    def _resolve(self, pick: Callable[[str, str, BaseDistribution], Any]) -> dict[str, Any]:
        """Walk the space in order: top-level, fixed, enabled conditional blocks, derived."""
        values: dict[str, Any] = {}
        for key, dist in self.distributions.items():
            _put(values, key, pick(key, key, dist))
        values.update(self.fixed_values)
        for index, (when, dists) in enumerate(self.conditional):
            if not when_matches(when, values):
                continue
            for key, dist in dists.items():
                if key not in values:  # blocks that overlap: the first enabled one owns the key
                    _put(values, key, pick(key, self._names[index][key], dist))
        for key, expression in self._expressions.items():
            if all(name in values for name in expression.names):  # inputs of inactive blocks: skip
                values[key] = expression.evaluate(values)
        return {key: value for key, value in values.items() if not is_virtual(key)}


def _put(values: dict[str, Any], key: str, value: Any) -> None:
    if value is not _MISSING:
        values[key] = value


def _coerce(dist: BaseDistribution, value: Any) -> Any:
    # YAML may give 8.0 for an int param or 1 for a float one; Optuna stores the distribution's type.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(dist, IntDistribution) and float(value).is_integer():
        return int(value)
    return float(value) if isinstance(dist, FloatDistribution) else value


def probe_points(dist: BaseDistribution) -> list[Any]:
    """The values that bound a distribution: every choice, or both ends of a range (the last point on its step)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    high = dist.high
    if dist.step:
        high = dist.low + int((dist.high - dist.low) // dist.step) * dist.step
        high = int(high) if isinstance(dist, IntDistribution) else high
    return [dist.low] if high == dist.low else [dist.low, high]


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Suggest `name` from `dist` through Optuna's public API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {dist!r}")


def is_virtual(key: str) -> bool:
    return key.startswith("_")


def display_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's params by config key: "network.dim|network=lora/dora" reads as network.dim (for people)."""
    return {name.partition("|")[0]: value for name, value in params.items()}


def same_value(a: Any, b: Any) -> bool:
    """Loose equality for `when`: numbers by value, anything else by its override text."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers:
        return float(a) == float(b)
    return (a if isinstance(a, str) else format_value(a)) == (b if isinstance(b, str) else format_value(b))


def when_matches(when: Mapping[str, list], values: Mapping[str, Any]) -> bool:
    return all(key in values and any(same_value(values[key], v) for v in accepted) for key, accepted in when.items())


def describe_when(when: Mapping[str, list]) -> str:
    return ",".join(f"{key}={'/'.join(format_value(v) for v in accepted)}" for key, accepted in when.items())


def _conditional_param_names(conditional: Sequence[Block]) -> list[dict[str, str]]:
    counts = Counter(key for _, dists in conditional for key in dists)
    seen: set[str] = set()
    names = []
    for index, (when, dists) in enumerate(conditional):
        block = {}
        for key in dists:
            name = key if counts[key] == 1 else f"{key}|{describe_when(when)}"
            if name in seen:
                raise ConfigError(
                    f"hydra.sweeper.conditional[{index}].params.{key}: another block with the same `when` "
                    f"({describe_when(when)}) already searches {key}"
                )
            seen.add(name)
            block[key] = name
        names.append(block)
    return names


def _compile_derived(space: SearchSpace) -> dict[str, Expression]:
    known = set(space.distributions) | set(space.fixed) | {k for _, dists in space.conditional for k in dists}
    expressions = {}
    for key, text in space.derived.items():
        if key in known:
            raise ConfigError(f"hydra.sweeper.derived.{key}: {key} is also a sweep param; a key is searched or derived")
        expressions[key] = compile_expression(key, text, known)
        _check_numeric_inputs(space, expressions[key])
        known.add(key)  # later expressions may read it
    return expressions


def _check_numeric_inputs(space: SearchSpace, expression: Expression) -> None:
    """Fail before any trial when a derived value reads a key that can never be a number."""
    for name in expression.names:
        candidates = [space.fixed_values[name]] if name in space.fixed else []
        for dists in [space.distributions] + [d for _, d in space.conditional]:
            if isinstance(dists.get(name), CategoricalDistribution):
                candidates += list(dists[name].choices)
        bad = [v for v in candidates if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ConfigError(f"hydra.sweeper.derived.{expression.key}: {name} can be {bad[0]!r}, not a number")


def parse_search_space(params: Mapping, conditional: Sequence = (), derived: Mapping = ()) -> SearchSpace:
    """Check and parse the sweep config; any mistake is a ConfigError naming its hydra.sweeper key."""
    params = _mapping(params, "hydra.sweeper.params")
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for key, value in params.items():
        parsed = distribution_from_override(str(key), value)
        if isinstance(parsed, BaseDistribution):
            distributions[str(key)] = parsed
        else:
            fixed[str(key)] = parsed
    blocks = _parse_conditional(conditional, distributions, fixed)
    derived_map = {str(k): v for k, v in _mapping(derived or {}, "hydra.sweeper.derived").items()}
    return SearchSpace(distributions, fixed, blocks, derived_map)


def _mapping(value: Any, where: str) -> dict:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping of key: value, got {type(value).__name__}")
    return dict(value)


def _parse_conditional(conditional: Any, distributions: dict, fixed: dict) -> list[Block]:
    if OmegaConf.is_config(conditional):
        conditional = OmegaConf.to_container(conditional, resolve=True)
    if conditional is None:
        return []
    if isinstance(conditional, (str, Mapping)) or not isinstance(conditional, Sequence):
        raise ConfigError("hydra.sweeper.conditional: must be a list of {when: ..., params: ...}")
    top_level = set(distributions) | set(fixed)
    known = set(top_level)
    blocks: list[Block] = []
    for index, entry in enumerate(conditional):
        where = f"hydra.sweeper.conditional[{index}]"
        when_raw, params_raw = _block_parts(entry, where)
        when = _parse_when(when_raw, where, known, distributions)
        dists = _parse_block_params(params_raw, where, top_level)
        blocks.append((when, dists))
        known |= set(dists)  # later blocks may condition on these
    return blocks


def _block_parts(entry: Any, where: str) -> tuple[Any, Any]:
    if is_dataclass(entry) and not isinstance(entry, type):
        return entry.when, entry.params
    entry = _mapping(entry, where)
    extra = sorted(set(entry) - {"when", "params"})
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; a conditional block has `when` and `params`")
    return entry.get("when"), entry.get("params")


def _parse_when(raw: Any, where: str, known: set[str], distributions: dict) -> dict[str, list]:
    raw = _mapping(raw, f"{where}.when")
    if not raw:
        raise ConfigError(f"{where}.when: must map at least one key to the values that enable this block")
    when = {}
    for key, accepted in raw.items():
        key = str(key)
        name = f"{where}.when.{key}"
        if key not in known:
            raise ConfigError(f"{name}: {key} is not set by hydra.sweeper.params or an earlier conditional block")
        accepted = list(accepted) if isinstance(accepted, (list, tuple)) else [accepted]
        if not accepted:
            raise ConfigError(f"{name}: lists no values, so the block could never be enabled")
        dist = distributions.get(key)
        if isinstance(dist, CategoricalDistribution):
            unknown = [v for v in accepted if not any(same_value(c, v) for c in dist.choices)]
            if unknown:
                raise ConfigError(f"{name}: {unknown[0]!r} is not one of the choices {list(dist.choices)}")
        when[key] = accepted
    return when


def _parse_block_params(raw: Any, where: str, top_level: set[str]) -> dict[str, BaseDistribution]:
    raw = _mapping(raw, f"{where}.params")
    if not raw:
        raise ConfigError(f"{where}.params: must map at least one key to a sweep")
    dists = {}
    for key, value in raw.items():
        key = str(key)
        if key in top_level:
            raise ConfigError(f"{where}.params.{key}: {key} is already in hydra.sweeper.params; set a key in one place")
        parsed = distribution_from_override(key, value, where=f"{where}.params")
        if not isinstance(parsed, BaseDistribution):  # a fixed value: a choice of one while the block is enabled
            parsed = distribution_from_override(key, f"choice({parsed})", where=f"{where}.params")
        dists[key] = parsed
    return dists
