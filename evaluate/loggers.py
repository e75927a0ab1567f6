"""Where a run's numbers and images go: a RunLogger per backend, fanned out by MultiLogger.

conf/logger/*.yaml names the backends by ``_target_``; ``build_logger`` builds them.
The backends live in loggers_tensorboard.py and loggers_wandb.py and are re-exported
here lazily, so `logger=none` never imports wandb or tensorboard.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluate.secrets import scrub_text
from train.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from evaluate.loggers_tensorboard import TensorBoardLogger
    from evaluate.loggers_wandb import WandbLogger

__all__ = ["MultiLogger", "RunLogger", "TensorBoardLogger", "WandbLogger", "build_logger"]

log = logging.getLogger(__name__)

_BACKENDS = {
    "TensorBoardLogger": "evaluate.loggers_tensorboard",
    "WandbLogger": "evaluate.loggers_wandb",
}


def __getattr__(name: str) -> Any:
    # `_target_: evaluate.loggers.WandbLogger` resolves here; the import happens only then.
    if name in _BACKENDS:
        return getattr(importlib.import_module(_BACKENDS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RunLogger:
    """One logging backend. Every method is a no-op, so a backend overrides only what it can show."""

    def start(
        self,
        run_dir: Path,
        run_name: str,
        config: dict,
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        pass

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def log_image(self, step: int, key: str, image: Image.Image, caption: str | None = None) -> None:
        pass

    def log_table(self, step: int, key: str, columns: list[str], rows: list[list]) -> None:
        pass

    def log_summary(self, values: dict[str, object]) -> None:
        pass

    def log_hparams(self, hparams: dict[str, object], metrics: dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass


class MultiLogger(RunLogger):
    """Fans each call out to its backends; a backend that raises is warned about and dropped.

    Logging is never worth a training run: a full disk under TensorBoard or a W&B
    hiccup costs that backend, not the trial.
    """

    def __init__(self, backends: Mapping[str, RunLogger] | None = None):
        self.backends: dict[str, RunLogger] = dict(backends or {})

    def start(self, run_dir, run_name, config, group=None, tags=None) -> None:
        self._each("start", Path(run_dir), run_name, config, group=group, tags=tags)

    def log_scalars(self, step, values) -> None:
        self._each("log_scalars", step, values)

    def log_image(self, step, key, image, caption=None) -> None:
        self._each("log_image", step, key, image, caption=caption)

    def log_table(self, step, key, columns, rows) -> None:
        self._each("log_table", step, key, columns, rows)

    def log_summary(self, values) -> None:
        self._each("log_summary", values)

    def log_hparams(self, hparams, metrics) -> None:
        self._each("log_hparams", hparams, metrics)

    def finish(self) -> None:
        self._each("finish")

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args, **kwargs)
            except Exception as err:
                # Error texts can quote a storage URL; never let its password into the log.
                log.warning("logger %r failed in %s and is dropped: %s", name, method, scrub_text(f"{err!r}"))
                del self.backends[name]
                if method != "finish":
                    _finish_quietly(backend)


def _finish_quietly(backend: RunLogger) -> None:
    # Close what the dropped backend holds open (event file, W&B run) so the next run starts clean.
    try:
        backend.finish()
    except Exception:
        log.debug("finishing a dropped logger failed too", exc_info=True)


def build_logger(cfg: Any) -> MultiLogger:
    """Instantiate every ``cfg.backends`` entry (name -> `_target_` node) into one MultiLogger.

    ``cfg`` is a LoggerConfig or its DictConfig. A bad entry is a ConfigError naming
    ``logger.backends.<name>``, raised before any training starts.
    """
    from hydra.utils import get_object, instantiate
    from omegaconf import DictConfig, OmegaConf

    backends_cfg = cfg.backends if cfg is not None else None
    if isinstance(backends_cfg, DictConfig):
        backends_cfg = OmegaConf.to_container(backends_cfg, resolve=True)
    backends: dict[str, RunLogger] = {}
    for name, node in (backends_cfg or {}).items():
        key = f"logger.backends.{name}"
        target = node.get("_target_") if isinstance(node, Mapping) else None
        if not target:
            raise ConfigError(f"{key}._target_: must be set, e.g. evaluate.loggers.TensorBoardLogger")
        try:
            get_object(target)
        except Exception:
            raise ConfigError(
                f"{key}._target_: unknown target {target!r}; use evaluate.loggers.TensorBoardLogger "
                "or evaluate.loggers.WandbLogger"
            ) from None
        try:
            backend = instantiate(node)
        except Exception as err:
            cause = err.__cause__ or err
            raise ConfigError(f"{key}: {cause}") from None
        if not isinstance(backend, RunLogger):
            raise ConfigError(f"{key}._target_: {target!r} is not a RunLogger")
        backends[name] = backend
    return MultiLogger(backends)
