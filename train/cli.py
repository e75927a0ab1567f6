"""What the ``python -m train`` and ``python -m evaluate`` entry points share.

Hydra reports its own config errors (unknown key, bad type, unknown group
option, unparsable override) as several lines and exit 1, the code it also
uses for a crash. Here they become what every other user error is: one
``error: ...`` line naming the override or key, and exit 2. A traceback stays
the sign of a bug; ``HYDRA_FULL_ERROR=1`` still shows Hydra's own report.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, NoReturn

from hydra._internal import utils as hydra_internal
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from train.errors import UserError


def exit_with(err: UserError | str) -> NoReturn:
    """A user's mistake: one message on stderr, exit 2."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def _valid_keys(cause: OmegaConfBaseException) -> list[str]:
    object_type = getattr(cause, "object_type", None)
    return [f.name for f in fields(object_type)] if is_dataclass(object_type) else []


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _key_error(key: str, cause: ConfigKeyError | ConfigAttributeError) -> str:
    valid = _valid_keys(cause)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    listing = f"; valid keys: {', '.join(valid)}" if valid else ""
    return f"{key}: not a config key{hint}{listing}"


def _missing_option(err: MissingConfigException) -> str:
    missing = err.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    # The typed schemas share the group's namespace but are not choices a user makes.
    options = [o for o in (err.options or []) if not o.endswith("_schema")]
    if not group or not options:
        return str(err).splitlines()[0]
    close = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{group}={option}: no such option in conf/{group}/{hint}; options: {', '.join(options)}"


def describe_hydra_error(err: CompactHydraException) -> str:
    """One line for a Hydra composition or parse error, naming the override or the key."""
    if isinstance(err, MissingConfigException):
        return _missing_option(err)
    if isinstance(err, OverrideParseException):
        return f"{err.override}: cannot parse this override: {_first_line(err.message)}"
    cause = err.__cause__
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):
        return _key_error(cause.full_key, cause)
    if isinstance(cause, OmegaConfBaseException):
        override = _first_line(str(err)).removeprefix("Error merging override ")
        return f"{override}: {getattr(cause, 'full_key', '') or 'config'}: {_first_line(cause.msg)}"
    return _first_line(str(err)) or type(err).__name__


def _group_value_error(err: ValueError) -> str | None:
    """``noise=null`` or ``network=16``: Hydra's defaults list raises a bare ValueError for a group given a
    value that is not an option's name, naming neither the override nor the options. Its frame holds both."""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    if not frames or not frames[-1].f_code.co_filename.endswith(os.path.join("hydra", "_internal", "defaults_list.py")):
        return None
    override, repo = frames[-1].f_locals.get("override"), frames[-1].f_locals.get("repo")
    if override is None or repo is None:
        return None
    group = override.key_or_group
    options = [o for o in repo.get_group_options(group) if not o.endswith("_schema")]
    close = difflib.get_close_matches(str(override.value()).lower(), options, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{override.input_line}: a config group takes one of its options{hint}; options: {', '.join(options)}"


def _output_dir_key(err: OSError) -> str | None:
    """``hydra.run.dir`` (or ``hydra.sweep.dir``) when ``err`` is Hydra failing to create the job's dir.

    That happens in Hydra's ``run_job`` before the task starts, so the last frame
    outside the standard library is ``run_job`` itself, not code of this project.
    """
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    own = [f for f in frames if not f.f_code.co_filename.startswith(sys.base_prefix)]
    if not own or own[-1].f_code.co_name != "run_job" or "hydra" not in own[-1].f_code.co_filename:
        return None
    multirun = any(arg in ("-m", "--multirun") for arg in sys.argv[1:])
    return "hydra.sweep.dir" if multirun else "hydra.run.dir"


def _report_config_errors(original: Callable[[Callable[[], Any]], Any]) -> Callable[[Callable[[], Any]], Any]:
    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") != "1":
                if isinstance(err, CompactHydraException):
                    exit_with(describe_hydra_error(err))
                key = _output_dir_key(err) if isinstance(err, OSError) else None
                if key:
                    exit_with(f"{key}: cannot create {err.filename}: {err.strerror} (choose a writable directory)")
                message = _group_value_error(err) if isinstance(err, ValueError) else None
                if message:
                    exit_with(message)
            caught = err

        def reraise() -> NoReturn:
            raise caught

        # Anything else keeps Hydra's own report: it is a bug, and its traceback is wanted.
        return original(reraise)

    return run_and_report


def report_hydra_errors_as_user_errors() -> None:
    """Install the one-line, exit-2 report for Hydra's config errors (idempotent)."""
    current = hydra_internal.run_and_report
    if getattr(current, "_one_line_errors", False):
        return
    patched = _report_config_errors(current)
    patched._one_line_errors = True  # type: ignore[attr-defined]
    hydra_internal.run_and_report = patched
