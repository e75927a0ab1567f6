"""TensorBoard backend: scalars, image grids, text tables, and an HParams entry at the end.

Everything goes to one event-file folder, ``run_dir/tensorboard``, so TensorBoard's
HParams tab shows each run with its parameters beside its own curves. Point
``tensorboard --logdir`` at a sweep's folder to compare its trials.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from evaluate.loggers import RunLogger
from evaluate.secrets import flatten, scrub_secrets

TB_DIR = "tensorboard"


class TensorBoardLogger(RunLogger):
    def __init__(self, flush_secs: int = 30):
        self.flush_secs = flush_secs
        self._writer = None
        self._step = 0

    def start(self, run_dir, run_name, config, group=None, tags=None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.finish()  # a run left open by a failed trial closes before the next one starts
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR), flush_secs=self.flush_secs)
        self._step = 0
        if config:
            rows = [[key, _cell(value)] for key, value in flatten(scrub_secrets(config)).items()]
            self._writer.add_text("config", markdown_table(["key", "value"], rows), 0)

    def log_scalars(self, step, values) -> None:
        if self._writer is None:
            return
        self._step = max(self._step, step)
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)

    def log_image(self, step, key, image, caption=None) -> None:
        if self._writer is None:
            return
        self._step = max(self._step, step)
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        self._writer.add_image(key, pixels, step, dataformats="HWC")

    def log_table(self, step, key, columns, rows) -> None:
        # TensorBoard's text plugin renders markdown; image cells have no place there.
        if self._writer is None:
            return
        keep = [i for i in range(len(columns)) if not any(isinstance(row[i], Image.Image) for row in rows)]
        text = markdown_table([columns[i] for i in keep], [[_cell(row[i]) for i in keep] for row in rows])
        self._writer.add_text(key, text, step)

    def log_summary(self, values) -> None:
        if self._writer is None:
            return
        rows = [[key, _cell(value)] for key, value in flatten(scrub_secrets(values)).items()]
        self._writer.add_text("summary", markdown_table(["key", "value"], rows), self._step)

    def log_hparams(self, hparams, metrics) -> None:
        """Write the HParams summaries into this run's own folder, not a sub-run as add_hparams would."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        if self._writer is None:
            return
        params = {key: hparam_value(value) for key, value in flatten(scrub_secrets(hparams)).items()}
        finals = {key: float(value) for key, value in metrics.items()}
        file_writer = self._writer._get_file_writer()
        for summary in hparams_summaries(params, finals):
            file_writer.add_summary(summary, self._step)
        # The HParams tab reads each metric's value from a scalar of the same tag in this run.
        for tag, value in finals.items():
            self._writer.add_scalar(tag, value, self._step)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def hparam_value(value: object) -> int | float | str | bool:
    """HParams accepts numbers, strings and booleans; anything else is shown as its text."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    # A "|" would end the cell early; a newline would end the row.
    return str(value).replace("|", "\\|").replace("\n", " ")
