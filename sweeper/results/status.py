"""``python -m sweeper status``: a terminal table of a study, running or finished."""

from __future__ import annotations

import sys
from collections import Counter

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from sweeper.report.live_table import STATE_STYLE, _fmt
from sweeper.space.search_space import display_params


def _duration(trial: FrozenTrial) -> str:
    if trial.duration is not None:
        return f"{trial.duration.total_seconds():.0f} s"
    return "running" if trial.state == TrialState.RUNNING else ""


def _reason(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prune_reason") or ""


def status_table(study: optuna.Study) -> Table:
    table = Table(title=f"study {study.study_name}", expand=False)
    for column in ("trial", "state", "value", "best step", "time", "params", "reason"):
        table.add_column(column, overflow="fold", justify="right" if column in ("trial", "value") else "left")
    for t in study.get_trials(deepcopy=False):
        best = t.user_attrs.get("best") or {}
        table.add_row(
            str(t.number),
            f"[{STATE_STYLE.get(t.state.name, '')}]{t.state.name}[/]",
            "-" if t.values is None else ", ".join(_fmt(v) for v in t.values),
            str(best.get("step", "")),
            _duration(t),
            " ".join(f"{k}={_fmt(v)}" for k, v in display_params(t.params).items()),
            _reason(t),
        )
    return table


def summary_lines(study: optuna.Study) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    lines = [", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "no trials yet"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(study.directions) == 1:
        best = study.best_trial
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in display_params(best.params).items())
        lines.append(f"best trial {best.number}: value {_fmt(best.value)} ({params})")
    elif complete:
        lines.append(f"Pareto front: trials {sorted(t.number for t in study.best_trials)}")
    return lines


def print_status(study: optuna.Study, where: str, console: Console | None = None) -> None:
    # Piped output gets a wide table rather than rich's 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(status_table(study))
    console.print(f"storage: {where}")
    for line in summary_lines(study):
        console.print(line)
