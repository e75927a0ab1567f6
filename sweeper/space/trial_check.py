"""The check a trial's config must pass before a sweep starts: compose it, then the trial's own pre-flight."""

from __future__ import annotations

from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from sweeper.config import SweeperConfig
from sweeper.slots.compose import ConfigSource, compose_trial
from train.errors import ConfigError, UserError
from train.preflight import check_run


def _message(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


class TrialCheck:
    """``check(overrides)``: the trial with these sampled overrides can run; else a UserError naming the problem.

    It composes the config as the trials will (Hydra's own loader inside a
    sweep), checks what a sweep needs of it, and runs the pre-flight every
    trial's recipe runs before it loads a model (train/preflight.py), without
    importing the recipe: no model library loads in the controller.
    """

    def __init__(self, cfg: SweeperConfig, base_overrides: list[str], run_dir: Path, source: ConfigSource):
        self.cfg, self.base_overrides, self.run_dir, self.source = cfg, list(base_overrides), Path(run_dir), source

    def __call__(self, overrides: list[str]):
        """The trial's RunConfig once it passed; a UserError naming the problem otherwise."""
        run_cfg = self._compose([*self.base_overrides, *overrides])
        directions = self.cfg.directions() or [run_cfg.evaluate.objective.direction]
        if not run_cfg.evaluate.enabled:
            raise ConfigError("evaluate.enabled: a sweep needs an evaluation to score trials (e.g. evaluate=demo)")
        if len(directions) == 1 and directions[0] != run_cfg.evaluate.objective.direction:
            raise ConfigError(
                f"hydra.sweeper.direction: {directions[0]} disagrees with evaluate.objective.direction "
                f"({run_cfg.evaluate.objective.direction}); the trial value is the evaluation objective"
            )
        try:
            check_run(run_cfg)
        except UserError:
            raise
        except Exception as err:  # what would fail every trial with this value: say so now, not in each trial
            raise ConfigError(f"the trial's pre-flight fails: {type(err).__name__}: {err}") from None
        return run_cfg

    def _compose(self, overrides: list[str]):
        try:  # as every worker composes its trial
            return compose_trial(self.source, overrides, self.run_dir)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_message(err)) from None
