"""``python -m train``: one LoRA training run, configured by Hydra from conf/."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from train.config import RunConfig, register_configs
from train.errors import ConfigError, UserError

register_configs()
log = logging.getLogger("train")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Resolve and type-check the composed config; runs every __post_init__ check."""
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key}: must be set (e.g. {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise ConfigError(f"{getattr(err, 'full_key', '') or 'config'}: {err.msg}") from None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str | None:
    from train.recipe import LoRATrainingRecipe  # heavy imports after Hydra has parsed the command line

    try:
        run_cfg = to_run_config(cfg)
        recipe = LoRATrainingRecipe(run_cfg, Path(run_cfg.paths.output_dir))
        recipe.setup()
        final = recipe.train()
    except UserError as err:
        # A user error is one message, never a traceback.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("network saved to %s", final)
    return str(final)


def _check_arguments() -> None:
    """What Hydra would reject with a hint and exit 1, said in one line with exit 2 (unknown hydra.sweeper keys)."""
    from sweeper.config import check_sweeper_arguments

    try:
        check_sweeper_arguments(sys.argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _check_arguments()
    main()
