"""The Hydra sweeper: ``python -m train -m sweep=lr_dim`` runs an Optuna study.

Hydra instantiates this class from ``hydra.sweeper`` (found through the
``hydra_plugins.lora_sweeper`` shim) and hands it the command line. Arguments
in sweep syntax (``optimizer.learning_rate=tag(log,interval(1e-5,1e-3))``) join
the search space, as with the official Optuna sweeper; all others are passed
to every trial. Trials do not go through a Hydra launcher: the controller feeds
persistent workers, one per slot (see controller.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from sweeper.config import SweeperConfig
from sweeper.verdict import SweepFailed
from train.errors import UserError

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def sweeper_config(kwargs: dict[str, Any]) -> SweeperConfig:
    """Type-check ``hydra.sweeper`` (runs SweeperConfig.__post_init__)."""
    from train.__main__ import to_run_config

    merged = OmegaConf.merge(OmegaConf.structured(SweeperConfig), OmegaConf.create(kwargs))
    return to_run_config(merged)


def split_arguments(arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """(overrides for every trial, {key: sweep expression}) from the command line."""
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
        self.hydra_context = hydra_context
        self.config = config

    def _compose_trial(self, overrides: list[str]):
        """One trial's typed config, composed by Hydra's loader as the launcher would."""
        from train.__main__ import to_run_config

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return to_run_config(cfg)

    def sweep(self, arguments: list[str]) -> Any:
        from sweeper.controller import SweepController

        try:
            base, swept = split_arguments(arguments)
            kwargs = dict(self.kwargs)
            kwargs["params"] = {**kwargs.get("params", {}), **swept}
            cfg = sweeper_config(kwargs)
            sweep_dir = Path(self.config.hydra.sweep.dir)
            if not any(arg.startswith("logger.group=") for arg in base):
                base.append(f"logger.group={cfg.study_name}")  # one W&B group per study
            controller = SweepController(
                cfg, base_overrides=base, sweep_dir=sweep_dir, config_dir=CONF_DIR, compose=self._compose_trial
            )
            return controller.run()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except SweepFailed as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
