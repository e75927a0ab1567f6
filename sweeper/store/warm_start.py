"""Warm start: a new study runs the best configurations of a finished one first.

``hydra.sweeper.warm_start`` names the finished sweep's dir (its ``optuna.db``) or a
storage URL; ``warm_start_study`` its study where the storage holds several;
``warm_start_top`` how many of its best finished trials are enqueued. Enqueued trials
are ordinary trials of the new study: they run first, count toward ``n_trials`` and
feed the sampler as they finish. A source whose searched keys or direction do not fit
this sweep is refused with one message before any trial starts; a top trial whose
values fall outside this sweep's ranges is left out, and the log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeper.space.enqueue_check import check_enqueue
from sweeper.space.search_space import SearchSpace
from sweeper.store.storage import make_storage, mask_url
from train.errors import ConfigError

log = logging.getLogger(__name__)
KEY = "hydra.sweeper.warm_start"


@dataclass
class WarmStart:
    source: str  # log-safe: the dir, or the URL with its password masked
    study_name: str
    entries: list[dict[str, Any]]  # {config key: value}, best first
    left_out: list[str]  # "trial N: why"

    def describe(self) -> str:
        text = f"warm start: {len(self.entries)} best configurations of study {self.study_name!r} ({self.source}) run first"
        return text + (f"; left out {'; '.join(self.left_out)}" if self.left_out else "")


def _storage_url(source: str) -> str:
    if "://" in source:
        return source
    path = Path(source).expanduser()
    db = path / "optuna.db" if path.is_dir() else path
    if not db.is_file():
        raise ConfigError(f"{KEY}: {source}: no optuna.db there; name a finished sweep's dir or a storage URL")
    return f"sqlite:///{db.absolute()}"


def _pick_study(names: list[str], wanted: str | None, source: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise ConfigError(f"{KEY}_study: no study {wanted!r} in {source}; it holds: {', '.join(names) or 'none'}")
        return wanted
    if len(names) != 1:
        listed = ", ".join(names) or "no study"
        raise ConfigError(f"{KEY}: {source} holds {listed}; name one with {KEY}_study=<name>")
    return names[0]


def config_values(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's searched config values: a conditional key's Optuna name is "key|condition"."""
    return {name.split("|", 1)[0]: value for name, value in trial.params.items()}


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(study.directions) > 1:  # the Pareto front first, in trial order
        return list(study.best_trials) if finished else []
    sign = -1 if study.direction == StudyDirection.MAXIMIZE else 1
    return sorted(finished, key=lambda t: (sign * t.value, t.number))


def load_warm_start(
    source: str, study_name: str | None, top: int, space: SearchSpace, directions: list[str], sweep_dir: Path
) -> WarmStart:
    """The source study's best ``top`` configurations that fit ``space``; ConfigError when the study does not fit."""
    shown = mask_url(source)
    url = _storage_url(source)
    try:
        storage = make_storage(url, sweep_dir)
        name = _pick_study(optuna.get_all_study_names(storage), study_name, shown)
        study = optuna.load_study(study_name=name, storage=storage)
    except ConfigError:
        raise
    except Exception as err:  # an unreachable server, a file that is not a study database
        raise ConfigError(f"{KEY}: cannot read {shown}: {type(err).__name__}: {mask_url(str(err))}") from None
    theirs = [d.name.lower() for d in study.directions]
    if theirs != [d.lower() for d in directions]:
        raise ConfigError(f"{KEY}: study {name!r} was to {', '.join(theirs)}; this sweep is to {', '.join(directions)}")
    ranked = _ranked(study)
    if not ranked:
        raise ConfigError(f"{KEY}: study {name!r} in {shown} has no finished trial to start from")
    searched = set(space.distributions) | {k for _, dists in space.conditional for k in dists}
    foreign = sorted({k for t in ranked for k in config_values(t)} - searched - set(space.fixed))
    if foreign:
        raise ConfigError(
            f"{KEY}: study {name!r} searched {', '.join(foreign)}, which this sweep does not; "
            f"this sweep searches: {', '.join(sorted(searched))}"
        )
    entries, left_out = [], []
    for trial in ranked:
        if len(entries) == top:
            break
        values = {k: v for k, v in config_values(trial).items() if k not in space.fixed}
        try:
            check_enqueue(space, [values], where=KEY)
        except ConfigError as err:
            left_out.append(f"trial {trial.number}: {str(err).removeprefix(f'{KEY}[0].')}")
            continue
        entries.append(values)
    if not entries:
        raise ConfigError(f"{KEY}: none of study {name!r}'s best trials fits this sweep's ranges: {'; '.join(left_out)}")
    return WarmStart(shown, name, entries, left_out)
