"""Evaluation prompts in kohya's sample-prompt formats.

A line is ``prompt --n negative --w 512 --h 768 --d 42 --l 7.5 --s 28 --ss euler_a``
(kohya's ``line_to_prompt_dict``). A prompt file is ``.txt`` (one line per
prompt, ``#`` comments), ``.toml`` (``[prompt]`` defaults with
``[[prompt.subset]]`` entries) or ``.json`` (a list of lines or dicts), read
as sd-scripts' ``load_prompts`` reads them. Unlike kohya, a bad value is an
error naming the file and line, never a silently ignored option.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from evaluate.samplers import check_sampler
from train.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    negative_prompt: str | None = None  # None: use the config default
    width: int | None = None
    height: int | None = None
    seed: int | None = None  # kohya --d
    guidance_scale: float | None = None  # --l
    steps: int | None = None  # --s
    sampler: str | None = None  # --ss


# kohya dict key -> (PromptSpec field, value type); the --options map onto the same keys.
FIELDS = {
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "width": ("width", int),
    "height": ("height", int),
    "seed": ("seed", int),
    "scale": ("guidance_scale", float),
    # kohya's SDXL sampler reads guidance_scale (--g) when scale (--l) is absent; so do we.
    "guidance_scale": ("guidance_scale", float),
    "sample_steps": ("steps", int),
    "sample_sampler": ("sampler", str),
}
LINE_OPTIONS = {
    "n": "negative_prompt",
    "w": "width",
    "h": "height",
    "d": "seed",
    "l": "scale",
    "g": "guidance_scale",
    "s": "sample_steps",
    "ss": "sample_sampler",
}
# kohya options/keys for features we do not render (ControlNet, flow models): warned about, then ignored.
IGNORED_OPTIONS = {"cn", "ctr", "rcfg", "fs", "f", "i"}
IGNORED_KEYS = {"controlnet_image", "enum", "cfg_trunc_ratio", "renorm_cfg", "flow_shift", "subset"}
AT_LEAST_ONE = ("width", "height", "sample_steps")


def _convert(key: str, value, where: str):
    """``value`` as the type of kohya key ``key``; ConfigError naming ``where`` when it is not one."""
    kind = FIELDS[key][1]
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        text = value.strip()
        return check_sampler(text, where) if key == "sample_sampler" else text
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        expected = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    if key in AT_LEAST_ONE and number < 1:
        raise ConfigError(f"{where}: must be >= 1, got {number}")
    if kind is float and not 0 <= number < float("inf"):
        raise ConfigError(f"{where}: must be a finite number >= 0, got {number}")
    return number


def prompt_from_dict(entry: dict) -> PromptSpec:
    """A PromptSpec from kohya's dict form (toml/json); ConfigError naming the key at fault."""
    entry = dict(entry)
    if "scale" in entry:
        entry.pop("guidance_scale", None)
    values = {}
    for key, value in entry.items():
        if key in IGNORED_KEYS:
            if key not in ("enum", "subset"):
                log.warning("evaluation prompts: %r is not supported and is ignored", key)
            continue
        if key not in FIELDS:
            raise ConfigError(f"{key}: unknown key; use {', '.join(FIELDS)}")
        values[FIELDS[key][0]] = _convert(key, value, key)
    if not values.get("prompt"):
        raise ConfigError("prompt: missing or empty")
    return PromptSpec(**values)


def parse_prompt_line(line: str) -> PromptSpec | None:
    """One kohya prompt line; None for a blank or ``#`` comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    prompt, *options = text.split(" --")
    entry: dict = {"prompt": prompt}
    for option in options:
        name, _, value = option.strip().partition(" ")
        name = name.lower()
        if name in IGNORED_OPTIONS:
            log.warning("evaluation prompts: --%s is not supported and is ignored", name)
            continue
        if name not in LINE_OPTIONS:
            raise ConfigError(f"--{name}: unknown option; use {', '.join('--' + o for o in LINE_OPTIONS)}")
        key = LINE_OPTIONS[name]
        if not value.strip() and key != "negative_prompt":
            raise ConfigError(f"--{name}: needs a value")
        entry[key] = _convert(key, value, f"--{name}")
    return prompt_from_dict(entry)


def _read_txt(path: Path) -> list[tuple[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"line {n}", line) for n, line in enumerate(lines, start=1)]


def _read_toml(path: Path) -> list[tuple[str, object]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"evaluate.prompt_file: {path}: not valid TOML ({error})") from None
    table = data.get("prompt")
    if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
        raise ConfigError(f"evaluate.prompt_file: {path}: expected a [prompt] table with [[prompt.subset]] entries")
    defaults = {k: v for k, v in table.items() if k != "subset"}
    # kohya merges each subset over the [prompt] defaults; the subset's own keys win here.
    return [(f"[[prompt.subset]] #{n}", defaults | subset) for n, subset in enumerate(table["subset"], start=1)]


def _read_json(path: Path) -> list[tuple[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"evaluate.prompt_file: {path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, list):
        raise ConfigError(f"evaluate.prompt_file: {path}: expected a JSON list of prompts")
    return [(f"entry {n}", entry) for n, entry in enumerate(data, start=1)]


READERS = {".txt": _read_txt, ".toml": _read_toml, ".json": _read_json}


def _parse_entry(entry: object) -> PromptSpec | None:
    if isinstance(entry, str):
        return parse_prompt_line(entry)
    if isinstance(entry, dict):
        return prompt_from_dict(entry)
    raise ConfigError(f"expected a prompt line or a table/object, got {entry!r}")


def _read_prompt_file(name: str) -> list[tuple[str, object]]:
    path = Path(name).expanduser()
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"evaluate.prompt_file: {path}: unknown format; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise ConfigError(f"evaluate.prompt_file: {path} does not exist")
    try:
        return [(f"evaluate.prompt_file: {path} {where}", entry) for where, entry in reader(path)]
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"evaluate.prompt_file: cannot read {path} ({error})") from None


def load_prompts(cfg) -> list[PromptSpec]:
    """The evaluation prompts of an EvaluateConfig: its prompt_file when set, else its prompts list."""
    check_sampler(cfg.sampler)
    if cfg.prompt_file:
        entries = _read_prompt_file(cfg.prompt_file)
        source = f"evaluate.prompt_file: {cfg.prompt_file}"
    else:
        entries = [(f"evaluate.prompts[{i}]", text) for i, text in enumerate(cfg.prompts)]
        source = "evaluate.prompts"
    prompts = []
    for where, entry in entries:
        try:
            spec = _parse_entry(entry)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        if spec is not None:
            prompts.append(spec)
    if not prompts:
        raise ConfigError(f"{source}: no prompts found")
    return prompts
