"""Every searched key and value is checked before the first trial.

A typo in a searched key, or a value no trial can take, would otherwise fail
every trial of a sweep. Before any worker starts, the controller composes a
trial's config at every choice and at both ends of every range, in every
conditional branch, and runs on each the pre-flight a trial runs. One key is
varied at a time from a trial that already passed, so a failure names the key
and the value at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweeper.space.param_syntax import format_value
from sweeper.space.search_space import SearchSpace, describe_when, probe_points
from train.errors import ConfigError, UserError


@dataclass(frozen=True)
class Probe:
    label: str  # what a failure names: "hydra.sweeper.params.network.dim=0"
    values: dict[str, Any]  # the trial's config values, derived ones included


def _enabling(space: SearchSpace, block: int) -> dict[str, Any]:
    """Values by config key that enable conditional ``block`` (and the earlier blocks its `when` reads)."""
    when = space.conditional[block][0]
    enable: dict[str, Any] = {}
    for key, accepted in when.items():
        owner = next((j for j in range(block) if key in space.conditional[j][1]), None)
        if owner is not None and key not in space.distributions:
            enable.update(_enabling(space, owner))
        enable[key] = accepted[0]
    return enable


def probes(space: SearchSpace) -> list[Probe]:
    """The trials to check: the first value of everything, then one key at a time at each of its bounding values."""
    found = [Probe("hydra.sweeper.params", space.values_with({}))]
    for key, dist in space.distributions.items():
        for value in probe_points(dist):
            found.append(Probe(f"hydra.sweeper.params.{key}={format_value(value)}", space.values_with({key: value})))
    for index, (_, dists) in enumerate(space.conditional):
        enable = _enabling(space, index)
        where = f"hydra.sweeper.conditional[{index}]"
        condition = describe_when({k: [v] for k, v in enable.items()})
        for key, dist in dists.items():
            for value in probe_points(dist):
                values = space.values_with({space.param_name(index, key): value}, enable)
                if key in values:  # a block that cannot be enabled here has nothing to check
                    found.append(Probe(f"{where}.params.{key}={format_value(value)} (when {condition})", values))
    unique: dict[str, Probe] = {}
    for probe in found:
        unique.setdefault(repr(sorted(probe.values.items(), key=lambda kv: kv[0])), probe)
    return list(unique.values())


def check_search_space(space: SearchSpace, check: Callable[[list[str]], None]) -> int:
    """Run ``check(overrides)`` (compose + pre-flight, raising UserError) on every probe; returns how many ran."""
    found = probes(space)
    for probe in found:
        try:
            check(space.overrides(probe.values))
        except UserError as err:
            passed = found[0].values if probe is not found[0] else {}
            culprit = _culprit(space, passed, probe.values, check)
            if culprit is None:
                raise ConfigError(f"{probe.label}: {err}") from None
            key, culprit_err = culprit
            raise ConfigError(f"{_label(space, key, probe.values)}: {culprit_err}") from None
    return len(found)


def _culprit(
    space: SearchSpace, passed: dict[str, Any], failing: dict[str, Any], check: Callable[[list[str]], None]
) -> tuple[str, UserError] | None:
    """The key whose value turns a passing trial into the failing one, adding the differences one at a time."""
    values = dict(passed)
    for key, value in failing.items():
        if key in passed and passed[key] == value:
            continue
        values[key] = value
        try:
            check(space.overrides(values))
        except UserError as err:
            return key, err
    return None


def _label(space: SearchSpace, key: str, values: dict[str, Any]) -> str:
    """Where ``key`` is set, with its value and, for a conditional key, the values that enabled its block."""
    text = f"{key}={format_value(values[key])}"
    if key in space.derived:
        return f"hydra.sweeper.derived.{text}"
    for index, (when, dists) in enumerate(space.conditional):
        if key in dists and all(k in values for k in when):
            condition = describe_when({k: [values[k]] for k in when})
            return f"hydra.sweeper.conditional[{index}].params.{text} (when {condition})"
    return f"hydra.sweeper.params.{text}"
