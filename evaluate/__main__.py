"""``python -m evaluate files=[a.safetensors,b.safetensors]``: score saved LoRA files without training."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from evaluate.score_config import register_score_config
from train.cli import exit_with, report_hydra_errors_as_user_errors
from train.config import register_configs
from train.errors import UserError

register_configs()
register_score_config()
log = logging.getLogger("evaluate")


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
def main(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    from evaluate.compare_check import check_comparison
    from train.__main__ import to_run_config

    try:
        score_cfg = to_run_config(cfg)
        checked = check_comparison(score_cfg)  # every input, before the model libraries load
    except UserError as err:
        exit_with(err)
    from evaluate.compare import FileComparison  # diffusers, the pipelines

    try:
        comparison = FileComparison(score_cfg, Path(score_cfg.paths.output_dir), checked=checked)
        results = comparison.run()
    except UserError as err:
        exit_with(err)
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
    report_hydra_errors_as_user_errors()
    main()
