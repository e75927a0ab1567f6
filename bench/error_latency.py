"""How long a user waits for the message about a mistake, side by side in one run.

Each row is a fresh process, timed from start to exit, interleaved round by
round so load on the machine hits every row alike; the table shows the median.
The reference row is ``python -c "import torch"``; the goal is that a config
error and a dataset error in ``python -m train`` (and a missing file in
``python -m evaluate``) take at most 1.5x that: the pre-flight runs before
diffusers, transformers and accelerate are imported. The last row is a good
run stopped right after the base model's libraries are imported (what every
error cost before the pre-flight moved ahead of them), for scale. The rows
marked "-" in the goal column are outside it, shown for scale: a missing model
path is the pre-flight's last check (the optimizer, schedule and network have
been built and checked by then), in ``python -m train`` and in a sweep's
controller, which checks the trial configs before any worker starts.

    python bench/error_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5


def cases(tmp: Path) -> list[tuple[str, list[str], int]]:
    """(label, argv after the interpreter, expected exit code); a label ending "*" is outside the goal."""
    empty = tmp / "no-images"
    empty.mkdir(exist_ok=True)
    run = f"hydra.run.dir={tmp / 'run'}"
    sweep = f"hydra.sweep.dir={tmp / 'sweep'}"
    no_model = ["model.build_tiny=false", f"model.path={tmp / 'no-model'}"]
    return [
        ("import torch (reference)", ["-c", "import torch"], 0),
        ("train: config error (network.dim=0)", ["-m", "train", "network.dim=0", run], 2),
        ("train: config error (unknown key)", ["-m", "train", "network.dimm=4", run], 2),
        ("train: dataset error (no images)", ["-m", "train", "dataset=folder", f"dataset.train_data_dir={empty}", run], 2),
        ("evaluate: missing file", ["-m", "evaluate", f"files=[{tmp / 'none.safetensors'}]", run], 2),
        ("train: model.path missing (last check) *", ["-m", "train", *no_model, run], 2),
        ("sweep: model.path missing (last check) *", ["-m", "train", "-m", "sweep=demo", *no_model, sweep], 2),
        ("import the recipe (old error path)", ["-c", "import train.recipe"], 0),
    ]


def time_once(argv: list[str], expected: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expected:
        raise SystemExit(f"{' '.join(argv)}: exit {result.returncode}, expected {expected}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LORA_SWEEP_CACHE": str(Path(tmp) / "cache"), "PYTHONPATH": str(ROOT)}
        rows = cases(Path(tmp))
        times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        for _, argv, expected in rows:  # warm the file cache once; not counted
            time_once(argv, expected, env)
        for _ in range(args.rounds):
            for label, argv, expected in rows:
                times[label].append(time_once(argv, expected, env))
    reference = statistics.median(times[rows[0][0]])
    table = Table(title=f"Time to the error message (median of {args.rounds} rounds, goal <= {GOAL}x import torch)")
    for column in ("case", "median s", "min s", "x import torch", "goal"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for label, _, expected in rows:
        median = statistics.median(times[label])
        ratio = median / reference
        goal = "" if expected == 0 else "-" if label.endswith("*") else ("met" if ratio <= GOAL else "MISSED")
        table.add_row(label, f"{median:.2f}", f"{min(times[label]):.2f}", f"{ratio:.2f}", goal)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
