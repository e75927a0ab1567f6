"""One way to compose a trial's config, used by the controller's pre-flight and by every worker.

Trials are composed from the controller's own config sources: its search path
(``--config-dir``, ``hydra.searchpath``, plugins), its config name
(``--config-name``) and its ``hydra.*`` command-line overrides, as Hydra's
``load_sweep_config`` does for a launcher. A search space kept in the user's
own config dir therefore works in every trial, not only in the pre-flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass(frozen=True)
class ConfigSource:
    config_name: str = "config"
    search_path: tuple[tuple[str, str], ...] = ()  # (provider, path), in Hydra's order
    hydra_overrides: tuple[str, ...] = field(default=(), repr=False)  # may hold a storage password

    @classmethod
    def from_hydra(cls, config_loader, config) -> ConfigSource:
        """The sources of the running Hydra app (the controller's)."""
        elements = config_loader.get_search_path().get_path()
        return cls(
            config_name=config.hydra.job.config_name,
            search_path=tuple((e.provider, e.path) for e in elements),
            hydra_overrides=tuple(config.hydra.overrides.hydra),
        )

    @classmethod
    def default(cls, config_dir: Path = CONF_DIR) -> ConfigSource:
        """The shipped conf/ folder, as ``python -m train`` finds it."""
        from hydra._internal.utils import create_config_search_path

        path = create_config_search_path(f"file://{Path(config_dir).resolve()}")
        return cls(search_path=tuple((e.provider, e.path) for e in path.get_path()))


def compose_trial(source: ConfigSource, overrides: list[str], run_dir: Path | str):
    """The typed RunConfig of one trial: ``overrides`` over the sources, output in ``run_dir``."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import RunMode
    from omegaconf import open_dict

    from train.__main__ import to_run_config

    Plugins.instance()  # registers the config source types and this sweeper's groups (plugin discovery)
    search_path = ConfigSearchPathImpl()
    for provider, path in source.search_path:
        search_path.append(provider, path)
    loader = ConfigLoaderImpl(config_search_path=search_path)
    cfg = loader.load_configuration(
        config_name=source.config_name,
        overrides=[*source.hydra_overrides, *overrides, f"paths.output_dir={run_dir}"],
        run_mode=RunMode.RUN,
    )
    # ${hydra:...} in a user's config resolves from this trial's hydra node; the caller's is put back.
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        return to_run_config(cfg)
    finally:
        hydra_config.cfg = previous
