"""One study compares network families: `python -m train -m sweep=network` on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from optuna.trial import TrialState

from tests.conftest import on_fast_stack
from tests.sweeps import load, run_sweep


def test_the_network_sweep_trains_each_family_in_one_study(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    families = ["hypernetwork", "loha", "dora"]
    args = [
        "-m",
        "sweep=network",
        f"model.path={tiny_model_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.cpu_slots=2",
        "hydra.sweeper.enqueue=[" + ",".join(f"{{network:{f}}}" for f in families) + "]",
        "train.max_train_steps=4",
        "evaluate.every_n_steps=2",
        "evaluate.num_inference_steps=2",
        "evaluate.seeds=[0]",
        "logger=none",
    ]
    result = run_sweep(on_fast_stack(args), tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    best_line = next(line for line in result.stderr.splitlines() if "best trial" in line)
    assert "network=" in best_line and "|" not in best_line  # params by config key, not Optuna's block names
    trials = load(sweep_dir, "network").trials
    assert [t.params["network"] for t in trials] == families
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in trials)
    hypernetwork, loha, dora = trials
    assert "network.module.activation" in hypernetwork.params and "network.dim|" not in str(hypernetwork.params)
    assert any(k.startswith("network.conv_dim") for k in loha.params)
    for trial, suffix in zip(trials, (".pt", ".safetensors", ".safetensors"), strict=True):
        best = trial.user_attrs["best"]
        assert Path(best["checkpoint"]).suffix == suffix and Path(best["checkpoint"]).is_file()
    config = json.loads((Path(dora.user_attrs["best"]["checkpoint"]).parent.parent / "train_summary.json").read_text())
    assert config["status"] == "completed"
