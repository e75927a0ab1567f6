"""The Hydra sweeper: ``python -m train -m sweep=lr_dim`` runs an Optuna study.

Hydra instantiates this class from ``hydra.sweeper`` (found through the
``hydra_plugins.lora_sweeper`` shim) and hands it the command line. As with the
official Optuna sweeper, arguments in sweep syntax
(``optimizer.learning_rate=tag(log,interval(1e-5,1e-3))``) join the search
space, and a plain ``key=value`` for a key the config searches takes that key
out of the search; all other arguments are passed to every trial. Trials do not
go through a Hydra launcher: the controller feeds persistent workers, one per
slot (see controller.py), which compose each trial from this app's config sources.
"""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeper.config import SweeperConfig, check_sweeper_keys
from sweeper.plugin_compat import announce_differences, fix_searched_keys, params_from_search_space
from sweeper.slots.compose import ConfigSource
from sweeper.verdict import SweepFailed
from train.atomic import check_writable_dir
from train.errors import UserError

log = logging.getLogger(__name__)


def sweeper_config(kwargs: dict[str, Any]) -> SweeperConfig:
    """Type-check ``hydra.sweeper`` (runs SweeperConfig.__post_init__)."""
    from train.__main__ import to_run_config

    check_sweeper_keys(kwargs)
    kwargs = params_from_search_space(kwargs)
    merged = OmegaConf.merge(OmegaConf.structured(SweeperConfig), OmegaConf.create(kwargs))
    return to_run_config(merged)


def split_arguments(arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """(overrides for every trial, {key: sweep expression}) from the command line, hydra.* left out."""
    parser = OverridesParser.create()
    base, swept = [], {}
    for override in parser.parse_overrides(arguments):
        if override.is_sweep_override():
            swept[override.get_key_element()] = override.input_line.split("=", 1)[1]
        elif not override.get_key_element().startswith("hydra."):
            # hydra.* configures Hydra and this sweeper (storage URLs with passwords...), not the trials.
            base.append(override.input_line)
    return base, swept


class LoRASweeper(Sweeper):
    def __init__(self, **kwargs: Any):
        # Checked in sweep(), where a bad value can be reported without a traceback.
        self.kwargs = {
            k: OmegaConf.to_container(v) if isinstance(v, DictConfig | ListConfig) else v for k, v in kwargs.items()
        }

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        # Workers compose trials from the same config name, search path and hydra.* overrides.
        self.source = ConfigSource.from_hydra(hydra_context.config_loader, config)

    def sweep(self, arguments: list[str]) -> Any:
        from sweeper.controller import SweepController

        try:
            base, swept = split_arguments(arguments)
            kwargs = dict(self.kwargs)
            kwargs["params"] = {**(kwargs.get("params") or {}), **swept}
            cfg = sweeper_config(kwargs)
            base = fix_searched_keys(cfg, base)
            announce_differences(self.kwargs, self.config.hydra.runtime.choices)
            if cfg.study_name is None:  # as Optuna: a new study with a generated name
                cfg.study_name = f"no-name-{uuid.uuid4()}"
                log.info("study_name is null: new study %r (set hydra.sweeper.study_name to resume it)", cfg.study_name)
            sweep_dir = check_writable_dir(self.config.hydra.sweep.dir, "hydra.sweep.dir")
            if not any(arg.startswith("logger.group=") for arg in base):
                base.append(f"logger.group={cfg.study_name}")  # one W&B group per study
            controller = SweepController(
                cfg, base_overrides=base, sweep_dir=sweep_dir, source=self.source, task_config=self.config
            )
            return controller.run()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except SweepFailed as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
