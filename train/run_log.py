"""What a run tells the outside: a progress bar, the loggers (W&B, TensorBoard), a summary file.

The bar is drawn only on a terminal. Elsewhere (a sweep worker, whose output goes to its trial.log; CI; a
pipe) progress is a log line now and then and one at the end: no carriage-return redraws in a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from evaluate.loggers import RunLogger
from evaluate.secrets import flatten, scrub_secrets
from train.atomic import write_bytes_atomic

SUMMARY_FILE = "train_summary.json"
PROGRESS_LINE_SECONDS = 10.0  # without a terminal: a progress line at most this often, and one at the end

log = logging.getLogger(__name__)


def _on_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _postfix_text(postfix: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in postfix.items())


class ProgressLines:
    """Progress as log lines: "training: 40/80 (12.5 it/s) loss=0.1 lr=0.0001"."""

    def __init__(self, description: str, total: int, every: float = PROGRESS_LINE_SECONDS):
        self.description, self.total, self.every = description, total, every
        self.n, self.postfix = 0, {}
        self.started = self.last_line = time.monotonic()

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = f" ({self.n / elapsed:.3g} it/s)" if self.n and elapsed > 0 else ""
        postfix = f" {_postfix_text(self.postfix)}" if self.postfix else ""
        return f"{self.description}: {self.n}/{self.total}{rate}{postfix}"

    def advance(self, n: int = 1, **postfix: float) -> None:
        self.n += n
        self.postfix.update(postfix)
        now = time.monotonic()
        if now - self.last_line >= self.every and self.n < self.total:
            log.info(self.line(now))
            self.last_line = now

    def close(self) -> None:
        log.info(self.line(time.monotonic()))  # where it ended: all steps, or where a failure stopped it


class RunLog:
    def __init__(self, output_dir: Path, logger: RunLogger):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger

    @classmethod
    def open(cls, output_dir: Path, logger: RunLogger, cfg) -> RunLog:
        """Write the run's resolved config (secrets masked) and start the loggers' runs."""
        run_log = cls(output_dir, logger)
        config = scrub_secrets(dataclasses.asdict(cfg))
        # Sweep trials have no .hydra/ folder of their own: this is their record of the config.
        write_bytes_atomic(run_log.output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)).encode())
        group = cfg.logger.group
        run_name = f"{group}-{run_log.output_dir.name}" if group else run_log.output_dir.name
        logger.start(run_log.output_dir, run_name=run_name, config=config, group=group)
        return run_log

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """Yield ``advance(n, **postfix)``; the bar (or line) shows it/s and the postfix (loss, lr)."""
        if not _on_terminal(sys.stderr):
            lines = ProgressLines(description, total)
            try:
                yield lines.advance
            finally:
                lines.close()
            return
        bar = tqdm(total=total, desc=description, dynamic_ncols=True, leave=True)

        def advance(n: int = 1, **postfix: float) -> None:
            if postfix:
                bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            bar.update(n)

        try:
            yield advance
        finally:
            bar.close()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.logger.log_scalars(step, values)

    def finish(
        self,
        cfg,
        *,
        status: str,
        reason: str | None,
        final: Path | None,
        checkpoints: list[Path],
        best,
        stats: dict[str, object],
    ) -> None:
        """Write train_summary.json, give the loggers the run's hparams and final metrics, close them."""
        summary = {
            "status": status,
            "reason": reason,
            "final_checkpoint": str(final) if final else None,
            "checkpoints": [str(p) for p in checkpoints],
            "best": dataclasses.asdict(best) if best else None,
            **stats,
        }
        write_bytes_atomic(self.output_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
        metrics = {"train/last_loss": stats.get("last_loss") or float("nan")}
        if best is not None:
            metrics |= {f"best/{k}": v for k, v in best.scores.items()}
            if best.value is not None:
                metrics["best/objective"] = best.value
        config = scrub_secrets(dataclasses.asdict(cfg))
        hparams = flatten({k: v for k, v in config.items() if k != "paths"})
        self.logger.log_hparams(hparams, metrics)
        self.logger.finish()
