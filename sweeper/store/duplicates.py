"""A configuration the study already ran is not trained again.

Optuna's FAQ ("How can I ignore duplicated samples?") answers a repeated
draw with the earlier trial's result. Here a trial whose params equal those of
a finished trial takes over that trial's outcome (its values, or its pruned or
failed state, and its intermediate values) without training; one equal to a
trial that is still running is skipped, without counting against the budget,
and another configuration is drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)
DUPLICATE_OF = "duplicate_of"


def find_twin(study: optuna.Study, number: int, params: Mapping[str, Any]) -> FrozenTrial | None:
    """The earliest trial other than ``number`` that ran, or runs, exactly ``params``."""
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number or DUPLICATE_OF in trial.user_attrs or trial.state == TrialState.WAITING:
            continue
        if trial.state == TrialState.FAIL and trial.user_attrs.get("requeued"):
            continue  # its retry (same params) is what runs it
        if trial.params == dict(params):
            return trial
    return None


def settle_duplicate(study: optuna.Study, trial: optuna.Trial, twin: FrozenTrial) -> str:
    """End ``trial`` from ``twin`` without training it; returns what happened, for the log."""
    trial.set_user_attr(DUPLICATE_OF, twin.number)
    if twin.state == TrialState.RUNNING:
        trial.set_user_attr("skipped", True)  # never ran: no budget spent, the controller draws again
        trial.set_user_attr("fail_reason", f"same configuration as running trial {twin.number}: skipped")
        study.tell(trial, state=TrialState.FAIL)
        return f"same configuration as running trial {twin.number}: skipped, another drawn"
    if len(study.directions) == 1:
        for step, value in sorted(twin.intermediate_values.items()):
            trial.report(value, step)  # pruners and TPE see the same curve as the twin's
    reason = twin.user_attrs.get("fail_reason") or twin.user_attrs.get("prune_reason")
    note = f"same configuration as trial {twin.number}" + (f" ({reason})" if reason else "")
    if twin.state == TrialState.COMPLETE:
        study.tell(trial, twin.values if len(twin.values) > 1 else twin.values[0])
    else:
        trial.set_user_attr("fail_reason" if twin.state == TrialState.FAIL else "prune_reason", note)
        study.tell(trial, state=twin.state)
    return f"{note}: its result reused, not trained again"


def repeated_configurations(trials: list[FrozenTrial]) -> int:
    """How many trained trials repeat the params of another trained trial (a retry repeating its own: not counted).

    What the checks above keep at 0; the benchmarks and tests count it on a study's trials.
    """
    trained = {t.number: t for t in trials if DUPLICATE_OF not in t.user_attrs and t.params}
    first: dict[str, int] = {}
    repeats = 0
    for trial in trained.values():
        root = trial.number
        while root in trained and "retry_of" in trained[root].user_attrs:
            root = trained[root].user_attrs["retry_of"]
        key = repr(sorted(trial.params.items()))
        if key in first and first[key] != root:
            repeats += 1
        first.setdefault(key, root)
    return repeats
