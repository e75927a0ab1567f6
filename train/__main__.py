"""``python -m train``: one LoRA training run, configured by Hydra from conf/."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from train.cli import exit_with, report_hydra_errors_as_user_errors
from train.config import RunConfig, register_configs
from train.errors import ConfigError, UserError

register_configs()
log = logging.getLogger("train")


def _added_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys a ``+key=value`` put into a typed node: OmegaConf.to_object would drop them without a word."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    added = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            added.append(path + (f" (did you mean '{prefix}{close[0]}'?)" if close else ""))
        elif not OmegaConf.is_missing(node, key) and isinstance(child := node[key], DictConfig):
            added += _added_keys(child, f"{path}.")
    return added


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Resolve and type-check the composed config; runs every __post_init__ check."""
    added = _added_keys(cfg)
    if added:
        keys = ", ".join(added)
        raise ConfigError(f"{keys}: not a config key (added with '+'; nothing reads it): remove it or fix its name")
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
    from train.preflight import check_run

    try:
        run_cfg = to_run_config(cfg)
        checked = check_run(run_cfg)  # every input, before the model libraries load
    except UserError as err:
        exit_with(err)  # a user error is one message, never a traceback
    from train.recipe import LoRATrainingRecipe, TrainingDiverged  # diffusers, transformers, accelerate

    try:
        recipe = LoRATrainingRecipe(run_cfg, Path(run_cfg.paths.output_dir), checked=checked)
        recipe.setup()
        final = recipe.train()
    except UserError as err:
        exit_with(err)
    except TrainingDiverged as err:
        opt = run_cfg.optimizer
        exit_with(
            f"training diverged: {err}; nothing was saved past the last checkpoint. "
            f"optimizer.learning_rate={opt.learning_rate:g} is likely too high for {opt.name}: lower it "
            "(or clip with train.max_grad_norm); train_summary.json records the failure"
        )
    log.info("network saved to %s", final)
    return str(final)


def _check_arguments() -> None:
    """What Hydra would reject with a hint and exit 1, said in one line with exit 2 (unknown hydra.sweeper keys)."""
    from sweeper.config import check_sweeper_arguments

    try:
        check_sweeper_arguments(sys.argv[1:])
    except UserError as err:
        exit_with(err)


if __name__ == "__main__":
    report_hydra_errors_as_user_errors()
    _check_arguments()
    main()
