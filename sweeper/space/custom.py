"""``hydra.sweeper.custom_search_space``: the official plugin's hook for params plain syntax cannot express.

The named function is called as ``function(cfg, trial)`` after the params are
sampled (``cfg`` is the sweep's whole config, as the plugin passes it); every
param it suggests goes to the trial as a ``name=value`` override, so a name
like ``+w`` adds a key, as with the plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from train.errors import ConfigError

KEY = "hydra.sweeper.custom_search_space"


def custom_search_space(path: str | None, task_config: Any) -> Callable[[optuna.Trial], dict[str, Any]] | None:
    """``extend(trial) -> {name: value}`` of the params the user's function suggested, or None when unset."""
    if not path:
        return None
    from hydra.utils import get_method

    try:
        function = get_method(path)
    except Exception as err:  # ImportError, AttributeError, or Hydra's wrapper of them
        reason = str(err.__cause__ or err).splitlines()[0]
        raise ConfigError(f"{KEY}: cannot import {path!r} ({reason}); give module.function importable here") from None

    def extend(trial: optuna.Trial) -> dict[str, Any]:
        before = set(trial.params)
        try:
            function(task_config, trial)
        except Exception as err:
            trial.study.tell(trial, state=TrialState.FAIL)  # asked, never run: not left RUNNING
            raise ConfigError(f"{KEY}: {path} raised {type(err).__name__}: {err}") from None
        return {name: value for name, value in trial.params.items() if name not in before}

    return extend
