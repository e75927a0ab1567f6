"""Evaluation inside training and on saved files, on the tiny model with demo CLIP weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from evaluate.reporter import RunPruned
from train.recipe import LoRATrainingRecipe

STEPS = ["train.max_train_steps=6", "train.save_every_n_steps=null", "logger=tensorboard"]
EVAL = ["evaluate=demo", "evaluate.every_n_steps=3", "evaluate.num_inference_steps=2", "evaluate.seeds=[0]"]


def run(cfg, reporter=None):
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir), reporter=reporter)
    recipe.setup()
    return recipe, recipe.train()


@pytest.mark.parametrize(
    "network",
    [[], ["network.network_dropout=0.2", "network.rank_dropout=0.2", "network.module_dropout=0.2"], ["network=dora"]],
    ids=["lora", "lora-dropouts", "dora"],
)
def test_evaluation_on_or_off_trains_identical_lora_bytes(make_run, network):
    # Dropouts draw from the RNG while training: evaluation (renders, validation loss) must not move it.
    _, with_eval = run(make_run(*STEPS, *EVAL, *network))
    _, without = run(make_run(*STEPS, "evaluate=none", *network))
    a, b = load_file(with_eval), load_file(without)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_evaluation_is_tied_to_a_checkpoint_and_the_best_is_recorded(make_run):
    cfg = make_run(*STEPS, *EVAL, "evaluate.baseline=true", "evaluate.multipliers=[0.5,1.0]")
    recipe, final = run(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "eval_results.json").read_text())
    steps = [e["step"] for e in results["evaluations"]]
    assert steps == [3, 6]
    for evaluation in results["evaluations"]:
        assert Path(evaluation["checkpoint"]).is_file()
        assert Path(evaluation["grid_path"]).is_file()
        assert {"clip_t", "clip_i", "aesthetic", "val_loss", "clip_t@baseline", "clip_t@x0.5"} <= set(
            evaluation["scores"]
        )
        assert "clip_t@x1" not in evaluation["scores"]  # the objective's row is the unsuffixed one
    assert results["evaluations"][-1]["checkpoint"] == str(final)
    assert results["demo_weights"] is True
    best = results["best"]
    values = [e["value"] for e in results["evaluations"]]
    assert best["value"] == max(values)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["best"]["checkpoint"] == best["checkpoint"] and summary["status"] == "completed"
    # Grid: 3 prompts x (baseline, x0.5, x1.0) rows, 1 seed column, plus labels.
    with Image.open(results["evaluations"][0]["grid_path"]) as grid:
        assert grid.height > 9 * 64 and grid.width > 64


def test_the_judge_logs_its_verdicts_beside_the_scores_never_as_the_objective(make_run):
    from tensorboard.backend.event_processing import event_accumulator as ea

    from train.config import WORLD_DIR

    prompts = "evaluate.prompts=[a sks on a grey background,a red sks on a black background,a red circle]"
    cfg = make_run(*STEPS, *EVAL, "evaluate.baseline=true", f"evaluate.judge_path={WORLD_DIR}/world-judge", prompts)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    results = json.loads((out / "eval_results.json").read_text())
    for evaluation in results["evaluations"]:
        scores = evaluation["scores"]
        # Two of the three prompts name the concept: fidelity is a share of their 2 renders (1 seed).
        for name in ("judge_fidelity", "judge_fidelity@baseline"):
            assert scores[name] in (0.0, 0.5, 1.0), (name, scores)
        assert "judge_editability" in scores and "judge_editability@baseline" in scores
        # The objective is evaluate=demo's, untouched by the judge's presence.
        assert evaluation["value"] == pytest.approx(scores["clip_t"])
    acc = ea.EventAccumulator(str(out / "tensorboard"), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    assert len(acc.Scalars("eval_demo/judge_fidelity")) == 2
    table = acc.Tensors("eval_demo/images/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "judge_shape" in table and "judge_background" in table


def test_validation_loss_is_deterministic_for_the_same_weights(make_run):
    recipe = LoRATrainingRecipe(make_run(*STEPS, *EVAL), Path(make_run(*STEPS).paths.output_dir))
    recipe.setup()
    state = recipe.noise_generator.get_state()
    first, second = recipe._validation_loss(), recipe._validation_loss()
    assert first == second and first > 0
    assert torch.equal(recipe.noise_generator.get_state(), state)  # the training generator is untouched


class PruneAtFirstReport:
    def __init__(self):
        self.reports = []

    def report(self, result):
        self.reports.append(result)

    def should_prune(self):
        return True


def test_a_reporter_can_prune_the_run(make_run):
    reporter = PruneAtFirstReport()
    cfg = make_run(*STEPS, *EVAL)
    with pytest.raises(RunPruned):
        run(cfg, reporter)
    assert [r.step for r in reporter.reports] == [3]
    summary = json.loads((Path(cfg.paths.output_dir) / "train_summary.json").read_text())
    assert summary["status"] == "pruned" and summary["steps"] == 3


def test_objective_naming_an_unavailable_metric_fails_before_training(make_run):
    from train.errors import ConfigError

    cfg = make_run(
        *STEPS,
        *EVAL,
        "dataset.validation_split=0",
        "~evaluate.objective.metrics.clip_t",
        "+evaluate.objective.metrics.val_loss=1.0",
    )
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    with pytest.raises(ConfigError, match="val_loss not available"):
        recipe.preflight()


def test_scoring_saved_files_writes_a_comparison_grid_and_table(make_run, tiny_model_dir, tmp_path):
    import csv

    from evaluate.compare import FileComparison
    from tests.conftest import compose_score

    cfg = make_run("train.max_train_steps=4", "train.save_every_n_steps=2", "evaluate=none", "logger=none")
    run(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    score_cfg = compose_score(
        [f"model.path={tiny_model_dir}", f"files=[{checkpoints}]", "evaluate.num_inference_steps=2"],
        tmp_path / "score",
        tmp_path / "cache",
    )
    comparison = FileComparison(score_cfg, tmp_path / "score")
    results = comparison.run()
    assert [r.path.name for r in results] == ["lora-step000002.safetensors", "lora.safetensors"]
    assert [r.step for r in results] == ["2", "4"]
    rows = list(csv.DictReader((tmp_path / "score" / "scores.csv").open()))
    assert len(rows) == 2 and sum(row["best"] == "*" for row in rows) == 1
    assert {"clip_t", "clip_i", "aesthetic", "objective"} <= set(rows[0])
    with Image.open(tmp_path / "score" / "comparison_grid.png") as grid:
        assert grid.height > 2 * 64  # a row per file
    # The two checkpoints render differently (the LoRA changed between step 2 and 4).
    assert results[0].scores != results[1].scores


def test_scoring_refuses_missing_files_before_loading(tiny_model_dir, tmp_path):
    from evaluate.compare import FileComparison
    from tests.conftest import compose_score
    from train.errors import ConfigError

    score_cfg = compose_score(
        [f"model.path={tiny_model_dir}", "files=[/no/such/lora.safetensors]"], tmp_path / "s", tmp_path / "c"
    )
    with pytest.raises(ConfigError, match="files: not found: /no/such/lora.safetensors"):
        FileComparison(score_cfg, tmp_path / "s").preflight()


def test_a_zero_weight_switches_off_an_inherited_metric():
    from evaluate.config import ObjectiveConfig
    from evaluate.objective import check_objective, objective_value

    cfg = ObjectiveConfig(metrics={"clip_t": 0.0, "val_loss": 1.0}, direction="minimize")
    check_objective(cfg, {"val_loss"})  # clip_t need not be available
    assert objective_value({"clip_t": 0.3, "val_loss": 0.7}, cfg) == 0.7
