"""The tables of a sweep's live view, as pure functions of the study's trials and the running slots.

The slots panel shows what runs now (per slot: trial, step/total, it/s, ETA,
last reported score); the study table shows finished trials only (value, best
step, params, reason), so it has no column that is empty once the sweep ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from sweeper.space.search_space import display_params

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def trial_reason(t: FrozenTrial) -> str:
    """Why a trial ended as it did (fail or prune reason, or the trial it repeats); empty for a plain result."""
    reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
    if not reason and "duplicate_of" in t.user_attrs:
        reason = f"result of trial {t.user_attrs['duplicate_of']} (same configuration)"
    return reason


def best_step(t: FrozenTrial) -> int | None:
    """The step of the trial's best evaluation, as the worker recorded it (none for a trial that never evaluated)."""
    return (t.user_attrs.get("best") or {}).get("step")


def last_score(t: FrozenTrial | None) -> float | None:
    """The latest intermediate value the trial reported (what the pruner judges it by)."""
    if t is None or not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_text(step: int, total: int | None, rate: float | None) -> str:
    if not total or not rate or rate <= 0:
        return ""
    return duration_text(max(0, total - step) / rate)


def slots_table(running: Mapping[int, Any], n_slots: int, trials: Sequence[FrozenTrial]) -> Table:
    """One row per slot. ``running`` maps trial number -> .slot, .step, .total, .rate (steps/s), .values."""
    by_number = {t.number: t for t in trials}
    by_slot = {r.slot: (number, r) for number, r in running.items()}
    table = Table(title=f"slots: {len(running)} of {n_slots} running", expand=False)
    for column in ("slot", "trial", "step", "it/s", "ETA", "last score", "params"):
        table.add_column(column, overflow="fold", justify="left" if column == "params" else "right")
    for slot in range(n_slots):
        if slot not in by_slot:
            table.add_row(str(slot), "[dim]idle[/]", "", "", "", "", "")
            continue
        number, r = by_slot[slot]
        total = getattr(r, "total", None)
        rate = getattr(r, "rate", None)
        score = last_score(by_number.get(number))
        table.add_row(
            str(slot),
            str(number),
            f"{r.step}/{total}" if total else str(r.step),
            f"{rate:.1f}" if rate else "",
            eta_text(r.step, total, rate),
            "" if score is None else _fmt(score),
            params_text(r.values),
        )
    return table


def study_table(study_name: str, trials: Sequence[FrozenTrial], max_rows: int | None = None) -> Table:
    """Finished trials (the last ``max_rows``): state, value, best step, params, reason."""
    finished = [t for t in trials if t.state in FINISHED]
    shown = finished[-max_rows:] if max_rows else finished
    caption = None
    if len(shown) < len(finished):
        caption = f"the last {len(shown)} of {len(finished)} finished trials; `python -m sweeper status` lists all"
    table = Table(title=f"study {study_name}", caption=caption, expand=False)
    for column in ("trial", "state", "value", "best step", "params", "reason"):
        table.add_column(
            column, overflow="fold", justify="right" if column in ("trial", "value", "best step") else "left"
        )
    for t in shown:
        state = t.state.name
        step = best_step(t)
        table.add_row(
            str(t.number),
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            "-" if t.values is None else ", ".join(_fmt(v) for v in t.values),
            "" if step is None else str(step),
            params_text(display_params(t.params)),
            trial_reason(t),
        )
    return table
