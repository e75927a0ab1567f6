"""Whether a sweep did what was asked: its failure rate while it runs, its verdict when it ends.

``hydra.sweeper.max_failure_rate`` keeps the official Optuna sweeper's meaning
(the share of failed trials past which the sweep stops), judged over the
trials this controller ran once ``MIN_JUDGED`` of them (or one per slot, if
more) have finished, and again at the end. A sweep that stopped for it, that
completed no trial, or that left its study short of ``n_trials`` exits
non-zero with the reasons its trials failed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MIN_JUDGED = 4


class SweepFailed(Exception):
    """The sweep ended without doing what was asked; the message says why (exit code 1)."""


@dataclass
class FailureRate:
    max_rate: float
    min_judged: int = MIN_JUDGED
    finished: int = 0
    reasons: Counter = field(default_factory=Counter)  # fail reason -> how many trials ended with it

    def record(self, state: str, reason: str | None) -> None:
        self.finished += 1
        if state == "FAIL":
            self.reasons[reason or "no reason given"] += 1

    @property
    def failed(self) -> int:
        return sum(self.reasons.values())

    def exceeded(self, final: bool = False) -> bool:
        judged = final or self.finished >= self.min_judged
        return judged and self.finished > 0 and self.failed / self.finished > self.max_rate

    def describe(self) -> str:
        return f"{self.failed} of {self.finished} trials failed, past hydra.sweeper.max_failure_rate={self.max_rate:g}"

    def summary(self) -> str:
        return "; ".join(f"{count} x {reason}" for reason, count in self.reasons.most_common())


def verdict(rate: FailureRate, completed: int, ran: int, n_trials: int, stopped: str | None) -> str | None:
    """Why the sweep failed, or None when it did what was asked."""
    problems = []
    if completed == 0:
        problems.append("no trial completed")
    if rate.exceeded(final=True):
        problems.append(rate.describe())
    if ran < n_trials and stopped is None:
        problems.append(f"the study has {ran} of its {n_trials} trials")
    if not problems:
        return None
    reasons = f". Trials failed with: {rate.summary()}" if rate.reasons else ""
    return "sweep failed: " + "; ".join(problems) + reasons
