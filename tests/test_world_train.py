"""The world's groups as a user runs them: bad input is one message before any model loads, and the
embedded default's LoRA learns the concept, by the judge."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import run_cli
from tests.test_user_errors import assert_one_message

pytestmark = pytest.mark.slow


BAD_WORLD_INPUT = {
    "concept-size": (["dataset.world.num_images=0"], "dataset.world.num_images: must be >= 1, got 0"),
    "concept-repeats": (["dataset.world.repeats=-1"], "dataset.world.repeats: must be >= 1, got -1"),
    "judge-path": (["evaluate.judge_path=/nonexistent/judge"], "evaluate.judge_path: /nonexistent/judge does not exist"),
    "world-dir": (["paths.world_dir=/nonexistent/world"], "evaluate.clip_path: /nonexistent/world/world-clip does not exist"),
    "judge-objective": (
        ["++evaluate.objective.metrics.judge_fidelity=1"],
        "evaluate.objective.metrics.judge_fidelity: the judge is the world's ground truth",
    ),
}


@pytest.mark.parametrize("args,message", list(BAD_WORLD_INPUT.values()), ids=list(BAD_WORLD_INPUT))
def test_bad_input_to_the_world_groups_is_one_message_before_any_model_loads(tmp_path, args, message):
    groups = ["model=world", "dataset=world", "evaluate=world"]
    result = run_cli(*groups, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=tmp_path / "cache")
    assert_one_message(result, message)
    assert "Loading" not in result.stderr  # neither the base model nor the CLIP was read


def test_a_short_lora_run_on_the_default_draws_the_concept_the_base_model_never_drew(tmp_path):
    """The embedded default as ``make train`` runs it, with a known-good short config to bound the time: near
    the landscape's best of bench/world_validity.py (lr 4.9e-3, rank 8, alpha 16: fidelity 0.45, 0.50, 0.75,
    0.75 at steps 50-200), cut to 150 steps and one evaluation (fidelity 0.55 against 0.00 here, 53 s; 600
    steps of the default took 109 s). The bench measures the default's whole run."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "logger=none", "optimizer.learning_rate=5e-3", "network.alpha=16", "network.conv_alpha=16",
        "train.max_train_steps=150", "train.save_every_n_steps=null", "evaluate.every_n_steps=null",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=tmp_path / "cache", fast=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["demo_weights"] is False
    final = results["evaluations"][-1]["scores"]
    assert final["judge_fidelity@baseline"] <= 0.1, final
    assert final["judge_fidelity"] >= final["judge_fidelity@baseline"] + 0.2, final
    for name in ("clip_t", "clip_i", "aesthetic", "val_loss", "judge_editability"):
        assert name in final
    # The verdicts are logged where the scores are: the run's summary holds the best evaluation's.
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert "judge_fidelity" in json.dumps(summary)
