"""A live terminal table of the sweep: trial, params, state, value, slot, step."""

from __future__ import annotations

import sys

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sweeper.space.search_space import display_params

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(study: optuna.Study, running: dict | None = None, max_rows: int | None = None) -> Table:
    """One row per trial (the last ``max_rows``): state, value, slot and step while running, params, reason."""
    running = running or {}
    table = Table(title=f"study {study.study_name}", expand=False)
    for column in ("trial", "state", "value", "slot", "step", "params", "reason"):
        table.add_column(column, overflow="fold")
    trials = study.get_trials(deepcopy=False)
    for t in trials[-max_rows:] if max_rows else trials:
        state = t.state.name
        live = running.get(t.number)
        value = "-" if t.values is None else ", ".join(_fmt(v) for v in t.values)
        params = " ".join(f"{k}={_fmt(v)}" for k, v in (live.values if live else display_params(t.params)).items())
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
        if not reason and "duplicate_of" in t.user_attrs:
            reason = f"result of trial {t.user_attrs['duplicate_of']} (same configuration)"
        table.add_row(
            str(t.number),
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            value,
            str(live.slot) if live else "",
            str(live.step) if live else "",
            params,
            reason,
        )
    return table


class LiveTable:
    def __init__(self, study: optuna.Study, running: dict, pool, max_rows: int = 20):
        self.study, self.running, self.pool, self.max_rows = study, running, pool, max_rows
        self.console = Console(file=sys.stderr, width=160)
        self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False, auto_refresh=False)

    def __enter__(self) -> LiveTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.refresh()
        self.live.__exit__(*exc)

    def refresh(self) -> None:
        self.live.update(self.render(), refresh=True)

    def render(self) -> Table:
        return trials_table(self.study, self.running, self.max_rows)

    def print_best(self) -> None:
        self.console.print()
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not complete:
            self.console.print("[red]no trial completed[/]")
            return
        if len(self.study.directions) == 1:
            best = self.study.best_trial
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in display_params(best.params).items())
            self.console.print(f"[bold green]best trial {best.number}[/]: value {_fmt(best.value)} ({params})")
            self.console.print(f"  run dir: {best.user_attrs.get('run_dir')}")
        else:
            self.console.print(f"[bold green]Pareto front[/]: trials {[t.number for t in self.study.best_trials]}")
