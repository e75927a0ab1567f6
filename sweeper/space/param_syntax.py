"""The `hydra.sweeper.params` syntax: Hydra sweep overrides to Optuna distributions, and values back to overrides.

`distribution_from_override` maps sweeps exactly as the official hydra-optuna-sweeper plugin's
`create_optuna_distribution_from_override` does, but rejects what the plugin would silently accept
or crash on (empty ranges, log of 0, unknown tags, glob) with a ConfigError naming the key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    Glob,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.override_parser.types import escape_special_characters as _escape
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from train.errors import ConfigError

_PRIMITIVES = (str, int, float, bool)
log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _parse(name: str, key: str, text: str) -> Override:
    try:
        return _parser().parse_overrides([f"{key}={text}"])[0]
    except Exception as e:  # Hydra raises OverrideParseException, but also omegaconf errors for nested sweeps
        # Hydra's message: an optional "Error parsing override" header, the reason, then a docs link.
        lines = [x for x in str(e).splitlines() if x.strip() and not x.startswith(("Error parsing", "See https"))]
        reason = lines[0] if lines else type(e).__name__
        raise ConfigError(f"{name}: cannot parse {text!r}: {reason}") from None


def distribution_from_override(key: str, value: Any, *, where: str = "hydra.sweeper.params") -> BaseDistribution | str:
    """A distribution for a sweep value, or the override text of a fixed (non-sweep) value."""
    name = f"{where}.{key}"
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        return _yaml_choice(name, value)
    override = _parse(name, str(key), value if isinstance(value, str) else format_value(value))
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    sweep = override.value()
    if isinstance(sweep, Glob):
        raise ConfigError(f"{name}: glob() needs config group listing, which Optuna cannot search; use choice()")
    if isinstance(sweep, ChoiceSweep):
        _check_tags(name, sweep, "choice", allowed=set())
        return _categorical(name, sweep.list)
    if isinstance(sweep, RangeSweep):
        _check_tags(name, sweep, "range", allowed={"log"})
        if "log" in sweep.tags:  # the plugin drops the tag on a range; say so rather than search linearly unawares
            log.warning(
                "%s: `log` is ignored on range() (as the official Optuna sweeper ignores it); "
                "for a log scale use tag(log, int(interval(%s, %s)))",
                name,
                format_value(sweep.start),
                format_value(sweep.stop),
            )
        return _range(name, sweep)
    if isinstance(sweep, IntervalSweep):
        _check_tags(name, sweep, "interval", allowed={"log"})
        return _interval(name, sweep)
    raise ConfigError(f"{name}: {value!r} is a sweep Optuna cannot search")


def _check_tags(name: str, sweep: Any, kind: str, allowed: set[str]) -> None:
    unknown = sorted(set(sweep.tags) - allowed)
    if unknown:
        raise ConfigError(
            f"{name}: unsupported tag {', '.join(unknown)} on {kind}(); the only tag is `log`, on interval()"
        )


def _categorical(name: str, elements: list[Any]) -> CategoricalDistribution:
    # The plugin's Transformer.encode: primitives stay, anything else (null, lists, dicts) becomes its override text.
    choices = [
        Transformer.encode(x) if not isinstance(x, (ChoiceSweep, RangeSweep, IntervalSweep)) else x for x in elements
    ]
    bad = [x for x in choices if not isinstance(x, _PRIMITIVES)]
    if bad:
        raise ConfigError(f"{name}: a choice cannot contain another sweep ({bad[0]})")
    if not choices:
        raise ConfigError(f"{name}: empty choice")
    return CategoricalDistribution(choices)


def _range(name: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if not step or step <= 0:
        raise ConfigError(f"{name}: range step must be > 0, got {step}")
    if start > stop:
        raise ConfigError(f"{name}: range({start}, {stop}) has no values (stop must be >= start)")
    if sweep.shuffle:  # shuffle only changes the enumeration order; keep it stable so every process agrees
        return _categorical(name, list(sweep.range()))
    # As the plugin: `stop` becomes Optuna's inclusive `high`, so range(1, 4) samples 1..4.
    if any(isinstance(x, float) for x in (start, stop, step)):
        return _build(name, FloatDistribution, start, stop, step=step)
    return _build(name, IntDistribution, int(start), int(stop), step=int(step))


def _interval(name: str, sweep: IntervalSweep) -> BaseDistribution:
    low, high, log = sweep.start, sweep.end, "log" in sweep.tags
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{name}: interval bounds must be finite, got ({low}, {high})")
    if low >= high:
        raise ConfigError(f"{name}: interval({low}, {high}) is empty: the low bound must be < the high bound")
    if log and low <= 0:
        raise ConfigError(f"{name}: tag(log, interval({low}, {high})) needs a low bound > 0")
    # Hydra makes interval bounds floats unless cast with int(...); the plugin keys int-ness on that.
    kind = IntDistribution if isinstance(low, int) and isinstance(high, int) else FloatDistribution
    return _build(name, kind, low, high, log=log)


def _build(name: str, kind: type, *args: Any, **kwargs: Any) -> BaseDistribution:
    try:
        return kind(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name}: {e}") from None


def _yaml_choice(name: str, values: list | tuple) -> CategoricalDistribution:
    """A YAML list is a choice of literal values, encoded as the plugin encodes choice() elements."""
    if not values:
        raise ConfigError(f"{name}: empty list; a choice needs at least one value")
    return CategoricalDistribution([x if isinstance(x, _PRIMITIVES) else format_value(x) for x in values])


def format_value(value: Any) -> str:
    """Override text that Hydra parses back to `value` (floats exact via repr, strings quoted when needed)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{format_value(str(k))}:{format_value(v)}" for k, v in value.items()) + "}"
    return _format_str(str(value))


def _format_str(text: str) -> str:
    for candidate in (text, _quoted(text), _escape(text)):
        if _reads_back(candidate, text):
            return candidate
    raise ConfigError(f"{text!r} cannot be written as a Hydra override value")


def _quoted(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "'" + text.replace("'", "\\'") + "'"


def _reads_back(candidate: str, text: str) -> bool:
    try:
        override = _parser().parse_overrides([f"k={candidate}"])[0]
    except Exception:
        return False
    if override.is_sweep_override():
        return False
    parsed = override.value()
    if isinstance(parsed, str) and parsed == text:
        return True
    # The plugin encodes choices it cannot keep (null, lists, quoted strings) as override text; that text,
    # written unquoted, means what the plugin's own `key=text` override meant.
    return (
        candidate == text and not isinstance(parsed, (int, float, bool)) and override.get_value_element_as_str() == text
    )


def parse_value(text: str) -> Any:
    """The Python value Hydra gives a non-sweep override text (used for fixed params)."""
    return _parser().parse_overrides([f"k={text}"])[0].value()
