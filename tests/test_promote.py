"""Promotion: which trial, what lands in the registry, idempotence, refusals, history, the W&B artifact.

Studies are built in a SQLite file with the trial records a sweep worker
leaves (``best``: checkpoint, sha256, scores), and found through the same
config path as ``python -m sweeper promote``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeper.__main__ import main
from sweeper.results.locate import locate_study
from sweeper.results.promote import promote
from sweeper.results.registry import PromotionRefused, Registry
from train.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTRIBUTIONS = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "dim": IntDistribution(2, 16)}


@pytest.fixture
def study_db(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def add_trial(study, tmp_path, values, scores, state=TrialState.COMPLETE, lr=1e-4, dim=4, step=20):
    """A finished trial with a real checkpoint file and the record a worker writes."""
    index = len(study.trials)
    checkpoint = tmp_path / "runs" / str(index) / "checkpoints" / f"lora-step{step:06d}.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(os.urandom(256))
    best = {
        "step": step,
        "epoch": 2,
        "checkpoint": str(checkpoint),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "scores": scores,
        "value": values[0],
        "grid": None,
        "images": [],
        "demo_weights": False,
        "base_model_hash": "b" * 64,
    }
    attrs = {"best": best, "run_dir": str(checkpoint.parents[1]), "overrides": [f"optimizer.learning_rate={lr}"]}
    if state == TrialState.PRUNED:
        attrs["prune_reason"] = "pruned at step 10"
    study.add_trial(
        create_trial(
            state=state,
            values=values if state == TrialState.COMPLETE else None,
            params={"lr": lr, "dim": dim},
            distributions=DISTRIBUTIONS,
            user_attrs=attrs,
        )
    )
    return checkpoint


def ref(study_db, tmp_path, name="s", *overrides):
    return locate_study(
        [
            f"hydra.sweeper.storage={study_db}",
            f"hydra.sweeper.study_name={name}",
            f"hydra.sweeper.promote.registry={tmp_path / 'promoted'}",
            "logger=none",
            *overrides,
        ]
    )


@pytest.fixture
def single(study_db, tmp_path):
    study = optuna.create_study(study_name="s", storage=study_db, direction="minimize")
    files = [
        add_trial(study, tmp_path, [0.9], {"val_loss": 0.9, "clip_t": 0.30}, lr=1e-4),
        add_trial(study, tmp_path, [0.5], {"val_loss": 0.5, "clip_t": 0.20}, lr=3e-4, step=40),
        add_trial(study, tmp_path, [0.7], {"val_loss": 0.7, "clip_t": 0.35}, lr=2e-4),
    ]
    add_trial(study, tmp_path, [0.1], {"val_loss": 0.1}, state=TrialState.PRUNED)
    return study, files


def test_single_objective_promotes_the_best_value_with_a_full_manifest(single, study_db, tmp_path):
    _, files = single
    result = promote(ref(study_db, tmp_path))
    registry = Registry(tmp_path / "promoted", "s")
    assert result.changed and result.path == registry.current_file
    assert registry.current_file.read_bytes() == files[1].read_bytes()  # trial 1 has the lowest value
    manifest = json.loads(registry.manifest_file.read_text())
    assert manifest["trial"] == 1 and manifest["step"] == 40 and manifest["version"] == 1
    assert manifest["values"] == [0.5] and manifest["directions"] == ["minimize"]
    assert manifest["params"] == {"lr": 3e-4, "dim": 4}
    assert manifest["scores"]["val_loss"] == 0.5 and manifest["scores"]["objective"] == 0.5
    assert manifest["sha256"] == hashlib.sha256(files[1].read_bytes()).hexdigest()
    assert manifest["base_model_hash"] == "b" * 64 and manifest["study"] == "s"
    assert manifest["source"] == str(files[1].resolve()) and "best value (minimize)" in manifest["chosen_by"]
    assert manifest["promoted_at"].endswith("+00:00")
    version_dir = registry.versions / "v001"
    assert (version_dir / files[1].name).read_bytes() == files[1].read_bytes()
    assert json.loads((version_dir / "manifest.json").read_text()) == manifest
    assert registry.history() == [manifest]
    assert not list(registry.versions.glob(".staging-*"))


def test_promoting_the_same_trial_twice_changes_nothing(single, study_db, tmp_path):
    first = promote(ref(study_db, tmp_path))
    registry = Registry(tmp_path / "promoted", "s")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in registry.dir.rglob("*") if p.is_file()}
    again = promote(ref(study_db, tmp_path))
    assert not again.changed and again.manifest == first.manifest
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in registry.dir.rglob("*") if p.is_file()}
    assert after == before
    assert main(["promote", *_cli(study_db, tmp_path)]) == 0  # the CLI agrees
    assert registry.history() == [first.manifest]


def _cli(study_db, tmp_path):
    return [
        f"hydra.sweeper.storage={study_db}",
        "hydra.sweeper.study_name=s",
        f"hydra.sweeper.promote.registry={tmp_path / 'promoted'}",
        "logger=none",
    ]


def test_a_new_promotion_keeps_the_history(single, study_db, tmp_path, capsys):
    _, files = single
    promote(ref(study_db, tmp_path))
    assert main(["promote", "--trial", "2", *_cli(study_db, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "promoted trial 2" in out and "replaces v001 (trial 1)" in out
    registry = Registry(tmp_path / "promoted", "s")
    assert registry.current_file.read_bytes() == files[2].read_bytes()
    assert [(e["version"], e["trial"]) for e in registry.history()] == [(1, 1), (2, 2)]
    assert registry.current()["chosen_by"] == "chosen by hand (--trial 2)"
    # the earlier promotion stays as it was
    assert (registry.versions / "v001" / files[1].name).read_bytes() == files[1].read_bytes()
    # going back to trial 1 is a new version, not a rewrite of v001
    promote(ref(study_db, tmp_path))
    assert [(e["version"], e["trial"]) for e in registry.history()] == [(1, 1), (2, 2), (3, 1)]


def test_a_changed_checkpoint_is_refused_and_nothing_is_written(single, study_db, tmp_path, capsys):
    _, files = single
    files[1].write_bytes(b"tampered" + files[1].read_bytes()[8:])
    with pytest.raises(PromotionRefused, match="has changed since the trial scored it"):
        promote(ref(study_db, tmp_path))
    assert not (tmp_path / "promoted" / "s" / "s.safetensors").exists()
    assert main(["promote", *_cli(study_db, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: trial 1:") and "Traceback" not in err


def test_hand_picked_trial_must_be_complete(single, study_db, tmp_path):
    with pytest.raises(ConfigError, match="trial 3 is PRUNED"):
        promote(ref(study_db, tmp_path), trial_number=3)
    with pytest.raises(ConfigError, match="no trial 9"):
        promote(ref(study_db, tmp_path), trial_number=9)


def test_floors_apply_to_a_single_objective(single, study_db, tmp_path):
    result = promote(ref(study_db, tmp_path, "s", "++hydra.sweeper.promote.floors={clip_t:0.25}"))
    assert result.manifest["trial"] == 2  # trial 1 is better but below the clip_t floor
    assert "clip_t >= 0.25" in result.manifest["chosen_by"]


MULTI = ["hydra.sweeper.direction=[maximize,maximize]", "hydra.sweeper.objectives=[clip_t,aesthetic]"]


@pytest.fixture
def multi(study_db, tmp_path):
    study = optuna.create_study(study_name="m", storage=study_db, directions=["maximize", "maximize"])
    add_trial(study, tmp_path, [0.30, 5.0], {"clip_t": 0.30, "aesthetic": 5.0, "val_loss": 0.9})
    add_trial(study, tmp_path, [0.20, 6.0], {"clip_t": 0.20, "aesthetic": 6.0, "val_loss": 0.8})
    add_trial(study, tmp_path, [0.25, 5.8], {"clip_t": 0.25, "aesthetic": 5.8, "val_loss": 0.7})
    add_trial(study, tmp_path, [0.10, 4.0], {"clip_t": 0.10, "aesthetic": 4.0, "val_loss": 0.6})
    return study


@pytest.mark.parametrize(
    ("rule", "trial"),
    [
        (["++hydra.sweeper.promote.weights={clip_t:10.0,aesthetic:1.0}"], 2),  # 8.3 vs 8.0 / 8.0 / 5.0
        (["++hydra.sweeper.promote.weights={clip_t:1.0,aesthetic:1.0}"], 1),
        (["hydra.sweeper.promote.metric=clip_t", "++hydra.sweeper.promote.floors={aesthetic:5.5}"], 2),
        (["hydra.sweeper.promote.metric=aesthetic", "++hydra.sweeper.promote.ceilings={val_loss:0.75}"], 2),
        (["hydra.sweeper.promote.metric=val_loss", "hydra.sweeper.promote.metric_direction=minimize"], 3),
    ],
)
def test_multi_objective_rules(multi, study_db, tmp_path, rule, trial):
    result = promote(ref(study_db, tmp_path, "m", *MULTI, *rule))
    assert result.manifest["trial"] == trial
    assert result.manifest["objectives"] == ["clip_t", "aesthetic"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ([], r"no single best trial \(Pareto front: \[0, 1, 2\]\)"),
        (["++hydra.sweeper.promote.weights={clip:1.0}"], r"promote.weights: no trial recorded \['clip'\]"),
        (["hydra.sweeper.promote.metric=val_loss"], "promote.metric_direction"),
        (["hydra.sweeper.promote.metric=clip_t", "++hydra.sweeper.promote.floors={aesthetic:9}"], "no COMPLETE trial"),
    ],
)
def test_multi_objective_rule_errors_name_the_key(multi, study_db, tmp_path, rule, message):
    with pytest.raises(ConfigError, match=message):
        promote(ref(study_db, tmp_path, "m", *MULTI, *rule))


def test_unknown_study_names_what_the_storage_holds(single, study_db, tmp_path):
    with pytest.raises(ConfigError, match="no study 'nope'.*it holds: s"):
        ref(study_db, tmp_path, "nope")


def test_wandb_artifact_is_logged_offline(single, study_db, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = promote(ref(study_db, tmp_path, "s", "logger=wandb"))
    info = result.manifest["wandb"]
    assert info["mode"] == "offline" and info["type"] == "lora" and info["aliases"] == ["best", "production"]
    registry = Registry(tmp_path / "promoted", "s")
    assert registry.current()["wandb"] == info and registry.history()[-1]["wandb"] == info
    [run_file] = (registry.dir / "wandb").glob("offline-run-*/*.wandb")
    data = run_file.read_bytes()
    # the artifact record: its name, type, aliases and the promoted file's digest travel in the offline run
    assert b"s-lora" in data and b"production" in data and b"lora" in data


def test_an_orphan_version_folder_is_never_overwritten(single, study_db, tmp_path):
    """A promoter that died after renaming its folder, before writing the history, leaves v001 behind."""
    registry = Registry(tmp_path / "promoted", "s")
    (registry.versions / "v001").mkdir(parents=True)
    (registry.versions / "v001" / "keep.txt").write_text("from the dead promoter")
    result = promote(ref(study_db, tmp_path))
    assert result.manifest["version"] == 2 and (registry.versions / "v002").is_dir()
    assert (registry.versions / "v001" / "keep.txt").read_text() == "from the dead promoter"


def test_registry_files_are_readable_by_other_users(single, study_db, tmp_path):
    promote(ref(study_db, tmp_path))
    registry = Registry(tmp_path / "promoted", "s")
    umask = os.umask(0)
    os.umask(umask)
    for path in (registry.current_file, registry.manifest_file, registry.versions / "v001"):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path


def test_a_hypernetwork_promotion_is_the_one_current_file(tmp_path):
    registry = Registry(tmp_path / "promoted", "s")
    lora, hypernetwork = tmp_path / "a.safetensors", tmp_path / "b.pt"
    for path, data in ((lora, b"lora bytes"), (hypernetwork, b"pt bytes")):
        path.write_bytes(data)

    def promote_file(path: Path, trial: int):
        return registry.promote(path, {"trial": trial, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})

    first = promote_file(lora, 0)
    assert first.path == registry.current_file == registry.dir / "s.safetensors"
    second = promote_file(hypernetwork, 1)
    assert second.path == registry.current_file == registry.dir / "s.pt"
    assert second.path.read_bytes() == b"pt bytes"
    assert not (registry.dir / "s.safetensors").exists()  # consumers never see two current files
    assert (registry.versions / "v002" / "b.pt").is_file() and (registry.versions / "v001" / "a.safetensors").is_file()
