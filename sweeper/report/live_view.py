"""What the controller shows while a sweep runs, on stderr.

On a terminal: one live view, redrawn in place (the slots panel above the
study table), with log lines and finished trials printed above it; when the
sweep ends the view gives way to the study table of finished trials. Anywhere
else (CI, a pipe, a log file): one plain line per trial event, nothing redrawn,
no escape codes. Workers never write here: their progress goes to their
trial.log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console, Group
from rich.file_proxy import FileProxy
from rich.live import Live

from sweeper.report.events import best_lines, finished_line, started_line
from sweeper.report.live_table import STATE_STYLE, slots_table, study_table

MAX_ROWS = 20  # finished trials in the live view (the terminal's height may allow fewer)


def sweep_view(study: optuna.Study, running: Mapping[int, Any], n_slots: int, stream: IO[str] | None = None):
    """A ``LiveView`` when ``stream`` (stderr by default) is a terminal, else ``EventLines``."""
    stream = stream or sys.stderr
    console = Console(file=stream)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveView(study, running, n_slots, console)
    return EventLines(study, running, stream)


class EventLines:
    """No terminal: one plain line per trial event, flushed at once so a log shows it as it happens."""

    def __init__(self, study: optuna.Study, running: Mapping[int, Any], stream: IO[str]):
        self.study, self.running, self.stream = study, running, stream

    def __enter__(self) -> EventLines:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def started(self, number: int) -> None:
        r = self.running[number]
        self._line(started_line(number, r.slot, r.values))

    def finished(self, trial: FrozenTrial, step: int) -> None:
        self._line(finished_line(trial, step))

    def refresh(self) -> None:
        pass  # nothing is redrawn

    def print_best(self) -> None:
        for line in best_lines(self.study):
            self._line(line)


class _LogsAboveLive:
    """Console log handlers write through the live console while it runs: a log line never tears the view."""

    def __init__(self, console: Console):
        self.console = console
        self.swapped: list[tuple[logging.StreamHandler, IO[str]]] = []

    def __enter__(self) -> None:
        for handler in _stream_handlers():
            stream = handler.stream
            if _is_terminal(stream):
                handler.setStream(FileProxy(self.console, stream))
                self.swapped.append((handler, stream))

    def __exit__(self, *exc) -> None:
        for handler, stream in self.swapped:
            proxy = handler.setStream(stream)
            if proxy is not None:
                proxy.flush()  # a last line without its newline
        self.swapped = []


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [
        h
        for logger in loggers
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class LiveView:
    """A terminal: the slots panel and the study table, redrawn in place on ``console``."""

    def __init__(self, study: optuna.Study, running: Mapping[int, Any], n_slots: int, console: Console):
        self.study, self.running, self.n_slots, self.console = study, running, n_slots, console
        # transient: the live region is erased at the end and the final study table printed once in its place.
        self.live = Live(
            console=console, auto_refresh=False, transient=True, redirect_stdout=True, redirect_stderr=True
        )
        self.logs = _LogsAboveLive(console)

    def __enter__(self) -> LiveView:
        self.live.start()
        self.logs.__enter__()
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        self.logs.__exit__(*exc)
        self.live.stop()
        self.console.print(study_table(self.study.study_name, self.study.get_trials(deepcopy=False), MAX_ROWS))

    def _max_rows(self) -> int:
        # The slots panel and the table's frame take about n_slots + 11 lines; the rest is rows.
        return max(1, min(MAX_ROWS, self.console.size.height - self.n_slots - 11))

    def render(self) -> Group:
        trials = self.study.get_trials(deepcopy=False)
        return Group(
            slots_table(self.running, self.n_slots, trials),
            study_table(self.study.study_name, trials, self._max_rows()),
        )

    def refresh(self) -> None:
        self.live.update(self.render(), refresh=True)

    def started(self, number: int) -> None:
        self.refresh()

    def finished(self, trial: FrozenTrial, step: int) -> None:
        style = STATE_STYLE.get(trial.state.name, "")
        self.console.print(finished_line(trial, step), style=style, markup=False, highlight=False)
        self.refresh()

    def print_best(self) -> None:
        lines = best_lines(self.study)
        self.console.print()
        style = "red" if lines == ["no trial completed"] else "bold green"
        self.console.print(lines[0], style=style, markup=False, highlight=False)
        for line in lines[1:]:
            self.console.print(line, markup=False, highlight=False)
