"""What a run tells the outside: a progress bar, the loggers (W&B, TensorBoard), a summary file."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from evaluate.loggers import RunLogger
from evaluate.secrets import flatten, scrub_secrets
from train.atomic import write_bytes_atomic

SUMMARY_FILE = "train_summary.json"


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
        """Yield ``advance(n, **postfix)``; the bar shows it/s and the postfix (loss, lr)."""
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
