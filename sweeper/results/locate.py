"""Find a sweep's study from the same config and overrides the sweep was launched with.

``python -m sweeper status sweep=demo`` composes conf/config.yaml as
``python -m train -m sweep=demo`` did, and reads ``hydra.sweeper.study_name``
and ``hydra.sweeper.storage`` from it. The default storage is SQLite inside the
sweep dir, whose name holds the launch time; unless the sweep dir is given
(``--sweep-dir`` or ``hydra.sweep.dir=...``) the newest sweep dir under the
same root that holds the study is used, and named in the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from sweeper.config import SweeperConfig
from sweeper.store.storage import describe_storage, make_storage
from train.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SQLITE_FILE = "optuna.db"


@dataclass
class StudyRef:
    cfg: SweeperConfig
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    storage_url: str  # may hold a password: show describe_storage(storage_url), never the URL
    sweep_dir: Path | None  # None for server storages given by URL
    run_cfg: DictConfig  # the composed config, hydra node removed (the trials' shared settings)

    @property
    def where(self) -> str:
        return describe_storage(self.storage_url)


def compose_sweep(overrides: list[str]) -> DictConfig:
    """The config ``python -m train -m <overrides>`` would compose, Hydra's own node included."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import CompactHydraException

    from train.cli import describe_hydra_error
    from train.config import register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=True)
    except CompactHydraException as err:
        raise ConfigError(describe_hydra_error(err)) from None


def sweeper_settings(cfg: DictConfig) -> SweeperConfig:
    from sweeper.hydra_sweeper import sweeper_config

    return sweeper_config(OmegaConf.to_container(cfg.hydra.sweeper, resolve=False))


def _sweep_root(pattern: str) -> Path:
    """The fixed part of hydra.sweep.dir: ``multirun/${now:...}/${now:...}`` -> ``multirun``."""
    if "${" not in pattern:
        return Path(pattern)
    fixed = pattern.split("${", 1)[0]
    return Path(fixed) if fixed.endswith("/") else Path(fixed).parent


def _studies_in(db: Path) -> list[str]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}", skip_table_creation=True)
    try:
        return [s.study_name for s in storage.get_all_studies()]
    finally:
        storage.remove_session()
        storage.engine.dispose()


def newest_sweep_dir(root: Path, study_name: str | None) -> Path:
    """The most recently written sweep dir under ``root`` whose SQLite storage holds ``study_name``.

    A null study name (a study Optuna named) takes the newest sweep dir holding exactly one study.
    """
    databases = sorted(root.glob(f"**/{SQLITE_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True)
    seen: dict[str, list[str]] = {}
    for db in databases:
        names = _studies_in(db)
        if study_name in names or (study_name is None and len(names) == 1):
            return db.parent
        seen[str(db.parent)] = names
    if not databases:
        raise ConfigError(
            f"hydra.sweep.dir: no sweep with a SQLite study under {root}/ (run a sweep first, "
            "or give --sweep-dir DIR or hydra.sweeper.storage=URL)"
        )
    found = "; ".join(f"{d}: {', '.join(n) or 'none'}" for d, n in list(seen.items())[:5])
    raise ConfigError(
        f"hydra.sweeper.study_name: no study {study_name!r} in the sweeps under {root}/ ({found}). "
        "Pass the sweep's own overrides (e.g. sweep=demo) or hydra.sweeper.study_name=NAME"
    )


def _given_sweep_dir(overrides: list[str]) -> str | None:
    for override in overrides:
        match = re.fullmatch(r"\+*hydra\.sweep\.dir=(.+)", override)
        if match:
            return match.group(1)
    return None


def locate_study(overrides: list[str], sweep_dir: str | Path | None = None) -> StudyRef:
    """The study the sweep with these overrides writes to; ConfigError naming the key if there is none."""
    overrides = list(overrides)
    if sweep_dir is None and (given := _given_sweep_dir(overrides)) is not None:
        sweep_dir = given
    cfg = compose_sweep(overrides)
    sweeper_cfg = sweeper_settings(cfg)
    name = sweeper_cfg.study_name
    if sweeper_cfg.storage is not None:
        url, folder = str(sweeper_cfg.storage), Path(sweep_dir) if sweep_dir else None
        storage = make_storage(url, folder or Path("."))
    else:
        pattern = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]
        folder = Path(sweep_dir) if sweep_dir else newest_sweep_dir(_sweep_root(pattern), name)
        db = folder / SQLITE_FILE
        if not db.is_file():
            raise ConfigError(f"hydra.sweep.dir: {folder} holds no study storage ({SQLITE_FILE}); is it a sweep dir?")
        url = f"sqlite:///{db.resolve()}"
        storage = make_storage(url, folder)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise ConfigError(
            f"hydra.sweeper.study_name: no study {name!r} in {describe_storage(url)}; "
            f"it holds: {', '.join(names) or 'no study'}"
        ) from None
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        del run_cfg["hydra"]
    return StudyRef(sweeper_cfg, study, storage, url, folder, run_cfg)
