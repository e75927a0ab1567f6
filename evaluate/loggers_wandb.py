"""Weights & Biases backend: one W&B run per training run, offline unless the user set W&B up.

Offline runs land in ``run_dir/wandb/offline-run-*``; ``wandb sync <that folder>``
uploads them later. Online is chosen only when the user configured W&B, with a
short init timeout, and falls back to offline rather than stall a trial.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from evaluate.loggers import RunLogger
from evaluate.secrets import flatten, scrub_process_argv, scrub_secrets, scrub_text

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "api.wandb.ai"


def has_wandb_credentials(environ: Mapping[str, str] | None = None) -> bool:
    """True when W&B can log in without asking: WANDB_API_KEY, an identity token, or a .netrc entry."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or f"https://{DEFAULT_HOST}").netloc or DEFAULT_HOST
    path = Path(env["NETRC"]).expanduser() if env.get("NETRC") else Path(env.get("HOME") or "~").expanduser() / ".netrc"
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(mode: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode a run will use: "online", "offline" or "disabled".

    "auto" goes online only when the user configured W&B (WANDB_MODE=online, or an
    API key is available); a WANDB_MODE of offline/disabled is honoured. An explicit
    "online" without credentials would stop at a login prompt, so it goes offline.
    """
    env = os.environ if environ is None else environ
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        env_mode = (env.get("WANDB_MODE") or "").lower()
        if env_mode in ("offline", "dryrun", "disabled"):
            return "disabled" if env_mode == "disabled" else "offline"
        if env.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
            return "disabled"
        mode = "online" if env_mode == "online" or has_wandb_credentials(env) else "offline"
    if mode == "online" and not has_wandb_credentials(env):
        log.warning("W&B mode is online but no API key is set (WANDB_API_KEY or `wandb login`); logging offline")
        return "offline"
    return mode


def start_wandb_run(mode: str, init_timeout: float, **kwargs):
    """``wandb.init`` for every run this project starts (training runs, promotions), secrets kept out."""
    import wandb

    scrub_process_argv()  # W&B stores sys.argv in the run's metadata
    settings = wandb.Settings(silent=True, console="off", init_timeout=init_timeout)
    return wandb.init(mode=mode, settings=settings, **kwargs)


class WandbLogger(RunLogger):
    # Seconds an online init may take before the run falls back to offline.
    INIT_TIMEOUT_S = 20.0

    def __init__(
        self, project: str = "lora-sweep", entity: str | None = None, mode: str = "auto", job_type: str = "train"
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.project, self.entity, self.mode, self.job_type = project, entity, mode, job_type
        self.run = None

    def start(self, run_dir, run_name, config, group=None, tags=None) -> None:
        mode = resolve_mode(self.mode)
        if mode == "disabled":
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            project=self.project,
            entity=self.entity,
            job_type=self.job_type,
            dir=str(run_dir),
            name=run_name,
            group=group,
            tags=list(tags) if tags else None,
            config=flatten(scrub_secrets(config or {})),
            # A sweep worker runs trial after trial in one process: each start is a new run.
            reinit="finish_previous",
        )
        if mode == "online":
            try:
                self.run = self._init("online", kwargs)
                return
            except Exception as err:
                log.warning(
                    "W&B online init failed (%s); logging offline to %s", scrub_text(str(err)), run_dir / "wandb"
                )
        self.run = self._init("offline", kwargs)

    def _init(self, mode: str, kwargs: dict):
        return start_wandb_run(mode, self.INIT_TIMEOUT_S, **kwargs)

    def log_scalars(self, step, values) -> None:
        if self.run is not None:
            self.run.log({key: float(value) for key, value in values.items()}, step=step)

    def log_image(self, step, key, image, caption=None) -> None:
        import wandb

        if self.run is not None:
            self.run.log({key: wandb.Image(image, caption=caption)}, step=step)

    def log_table(self, step, key, columns, rows) -> None:
        import wandb

        if self.run is None:
            return
        data = [[wandb.Image(cell) if isinstance(cell, Image.Image) else cell for cell in row] for row in rows]
        self.run.log({key: wandb.Table(columns=list(columns), data=data)}, step=step)

    def log_summary(self, values) -> None:
        if self.run is not None:
            self.run.summary.update({key: _plain(value) for key, value in scrub_secrets(values).items()})

    def log_hparams(self, hparams, metrics) -> None:
        if self.run is None:
            return
        self.run.config.update(flatten(scrub_secrets(hparams)), allow_val_change=True)
        self.run.summary.update({key: float(value) for key, value in metrics.items()})

    def finish(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.finish()


def _plain(value: object) -> object:
    # W&B summaries take JSON-like values; a Path or a dataclass becomes its text.
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)
