"""Finding a sweep's study from the sweep's own overrides, as `python -m sweeper ...` does."""

from __future__ import annotations

import os
import time

import optuna
import pytest

from sweeper.results.locate import locate_study, newest_sweep_dir
from train.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sweep_dir(root, stamp: str, study_name: str, mtime: float):
    folder = root / "multirun" / "2026-11-30" / stamp
    folder.mkdir(parents=True)
    optuna.create_study(study_name=study_name, storage=f"sqlite:///{folder / 'optuna.db'}")
    os.utime(folder / "optuna.db", (mtime, mtime))
    return folder


def test_the_newest_sweep_dir_holding_the_study_is_used(tmp_path, monkeypatch):
    now = time.time()
    old_demo = make_sweep_dir(tmp_path, "10-00-00", "demo", now - 300)
    make_sweep_dir(tmp_path, "11-00-00", "other", now - 100)
    new_demo = make_sweep_dir(tmp_path, "12-00-00", "demo", now - 200)
    assert newest_sweep_dir(tmp_path / "multirun", "demo") == new_demo
    monkeypatch.chdir(tmp_path)  # hydra.sweep.dir is multirun/${now:...}/${now:...}, relative to the cwd
    ref = locate_study(["sweep=demo"])
    assert ref.sweep_dir.resolve() == new_demo and ref.study.study_name == "demo"
    assert locate_study(["sweep=demo"], sweep_dir=old_demo).sweep_dir == old_demo
    assert locate_study(["sweep=demo", f"hydra.sweep.dir={old_demo}"]).sweep_dir == old_demo


def test_missing_sweeps_and_studies_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no sweep with a SQLite study under multirun/"):
        locate_study(["sweep=demo"])
    make_sweep_dir(tmp_path, "10-00-00", "other", time.time())
    with pytest.raises(ConfigError, match=r"no study 'demo' in the sweeps under multirun/ \(.*: other\)"):
        locate_study(["sweep=demo"])
    with pytest.raises(ConfigError, match="holds no study storage"):
        locate_study(["sweep=demo"], sweep_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^no_such_group: not a config key; valid keys: paths, model"):
        locate_study(["no_such_group=x"])
