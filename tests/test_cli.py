"""`python -m train` as a user runs it: Hydra's run dir, files written, user errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import on_fast_stack

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_cli(
    *args: str, cwd: Path, cache: Path, module: str = "train", fast: bool = True
) -> subprocess.CompletedProcess:
    """``python -m module args``; ``fast``: on the tiny stack unless the args choose their groups (conftest)."""
    env = {**os.environ, "LORA_SWEEP_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    if fast and module in ("train", "evaluate"):
        args = tuple(on_fast_stack(args))
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_trains_into_the_given_run_dir(tmp_path):
    run_dir = tmp_path / "my-run"
    result = run_cli(
        "train.max_train_steps=8",
        "train.save_every_n_steps=4",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "checkpoints" / "lora.safetensors").is_file()
    assert (run_dir / "checkpoints" / "lora-step000004.safetensors").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train_summary.json").is_file()
    # The default evaluates at the end: grid, scores, W&B offline run, TensorBoard events.
    assert list((run_dir / "eval").glob("grid-step*.png"))
    assert (run_dir / "eval_results.json").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # `python -m evaluate` scores the run's two checkpoints side by side.
    score_dir = tmp_path / "scores"
    result = run_cli(
        f"files=[{run_dir / 'checkpoints'}]",
        "evaluate.num_inference_steps=2",
        f"hydra.run.dir={score_dir}",
        cwd=tmp_path,
        cache=tmp_path / "cache",
        module="evaluate",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lora-step000004.safetensors" in result.stdout and "demo weights" in result.stdout
    assert {p.name for p in score_dir.iterdir()} >= {"comparison_grid.png", "scores.csv", "scores.json"}
    # The embedded default built its model and data under the cache dir, not the repo.
    assert (tmp_path / "cache" / "models" / "tiny-sd15" / "model_index.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache" / "data" / "synthetic").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=sd15", "model.path=/no/such/model"], "model.path: /no/such/model does not exist"),
        (["dataset=folder"], "dataset.train_data_dir: not set"),
        (["optimizer.factory._target_=torch.optim.Nope"], "optimizer.factory._target_: cannot import"),
    ],
    ids=["model-path", "dataset-unset", "optimizer"],
)
def test_user_errors_are_one_message_and_exit_2(tmp_path, args, message):
    result = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Stopped before any model was built or loaded.
    assert not (tmp_path / "cache" / "models").exists()
