"""``python -m evaluate files=[a.safetensors,b.safetensors]``: score saved LoRA files without training."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from evaluate.score_config import register_score_config
from train.config import register_configs
from train.errors import UserError

register_configs()
register_score_config()
log = logging.getLogger("evaluate")


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
def main(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    from evaluate.compare import FileComparison
    from train.__main__ import to_run_config

    try:
        score_cfg = to_run_config(cfg)
        comparison = FileComparison(score_cfg, Path(score_cfg.paths.output_dir))
        results = comparison.run()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    demo = " (demo weights: not real scores)" if comparison.scorer_demo else ""
    table = Table(title=f"LoRA scores{demo}")
    for column in ("file", "step", *comparison.metric_names, "objective"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for r in results:
        marker = " *" if r is comparison.best else ""
        table.add_row(
            r.path.name + marker,
            r.step,
            *(f"{r.scores[m]:.4f}" if m in r.scores else "-" for m in comparison.metric_names),
            "-" if r.value is None else f"{r.value:.4f}",
        )
    Console(width=160).print(table)
    log.info("comparison grid, scores.csv and scores.json in %s", comparison.out_dir)


if __name__ == "__main__":
    main()
