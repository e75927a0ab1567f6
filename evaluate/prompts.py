"""Evaluation prompts in kohya's sample-prompt formats.

A line is ``prompt --n negative --w 512 --h 768 --d 42 --l 7.5 --s 28 --ss euler_a``
(kohya's ``line_to_prompt_dict``). A prompt file is ``.txt`` (one line per
prompt, ``#`` comments), ``.toml`` (``[prompt]`` defaults with
``[[prompt.subset]]`` entries) or ``.json`` (a list of lines or dicts), read
as sd-scripts' ``load_prompts`` reads them. Prompt text keeps A1111 weighting
(``(word:1.2)``), which evaluate/prompt_weights.py applies.

Where kohya bends a value (sizes to multiples of 8 and at least 64, steps to
1..1000, the digits before a decimal point) the same happens, with a warning.
Options kohya ignores for SD/SDXL (``--g``, unknown ones) are ignored with a
warning. A value kohya cannot read, which it would drop without a word, is an
error; every bad line of a file is listed in one error, by file and line.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from evaluate.prompt_weights import parse_attention
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
    guidance_scale: float | None = None  # --l (kohya's "scale")
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
    "sample_steps": ("steps", int),
    "sample_sampler": ("sampler", str),
}
LINE_OPTIONS = {"n": "negative_prompt", "w": "width", "h": "height", "d": "seed", "l": "scale", "s": "sample_steps"}
LINE_OPTIONS["ss"] = "sample_sampler"
# What kohya reads but its SD/SDXL sampler never uses, and why; the option and its key.
IGNORED = {
    "g": ("guidance_scale", "FLUX's embedded guidance; kohya's SD/SDXL samples use --l for the CFG scale"),
    "cn": ("controlnet_image", "ControlNet images are not rendered here"),
    "ctr": ("cfg_trunc_ratio", "used by kohya's Lumina sampler only"),
    "rcfg": ("renorm_cfg", "used by kohya's Lumina sampler only"),
    "fs": ("flow_shift", "used by kohya's flow-matching samplers only"),
}
IGNORED_KEYS = {key: why for key, why in IGNORED.values()}
SILENT_KEYS = {"enum", "subset"}  # kohya's own bookkeeping keys
MIN_SIZE, STEPS = 64, (1, 1000)  # kohya's sample_image_inference and line_to_prompt_dict


class Problems:
    """What is wrong with one prompt entry: errors collected, warnings logged, both under ``where``."""

    def __init__(self, where: str):
        self.where, self.errors = where, []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        log.warning("%s%s", f"{self.where}: " if self.where else "", message)

    def raise_if_any(self) -> None:
        if self.errors:
            prefix = f"{self.where}: " if self.where else ""
            raise ConfigError(prefix + "; ".join(self.errors))


def _number(key: str, value, name: str, problems: Problems):
    """``value`` as kohya reads a number for ``key``; None after recording an error."""
    kind = FIELDS[key][1]
    expected = "a whole number >= 0" if kind is int else "a number >= 0"
    expected += " and < 2**64" if key == "seed" else ""  # torch.Generator's range
    try:
        if isinstance(value, bool):
            raise ValueError
        text = str(value).strip()
        number = int(text) if text.isdigit() else float(text)  # int(): a long seed keeps every digit
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (key == "seed" and number >= 2**64):
        problems.error(f"{name}: expected {expected}, got {value!r}")
        return None
    if kind is float:
        return number
    whole = int(number)
    if whole != number:
        problems.warn(f"{name}: {value!r} read as {whole}, as kohya reads the digits before the point")
    if key in ("width", "height"):
        rounded = max(MIN_SIZE, whole - whole % 8)
        if rounded != whole:
            problems.warn(f"{name}: {whole} rendered as {rounded} (a multiple of 8, at least {MIN_SIZE}, as kohya)")
        return rounded
    if key == "sample_steps" and not STEPS[0] <= whole <= STEPS[1]:
        clamped = min(max(whole, STEPS[0]), STEPS[1])
        problems.warn(f"{name}: {whole} steps clamped to {clamped} (kohya allows {STEPS[0]}..{STEPS[1]})")
        return clamped
    return whole


def _convert(key: str, value, name: str, problems: Problems):
    """``value`` as kohya key ``key`` takes it (named ``name`` in messages); None after an error."""
    if FIELDS[key][1] is not str:
        return _number(key, value, name, problems)
    if not isinstance(value, str):
        problems.error(f"{name}: expected text, got {value!r}")
        return None
    text = value.strip()
    if key in ("prompt", "negative_prompt"):
        try:
            parse_attention(text)
        except ValueError as error:
            problems.error(f"{name}: {error}")
            return None
    if key == "sample_sampler":
        try:
            check_sampler(text, name)
        except ConfigError as error:
            problems.error(str(error))
            return None
    return text


def _spec(entry: dict, problems: Problems) -> PromptSpec | None:
    """A PromptSpec from kohya's dict form; None when ``problems`` has errors."""
    values = {}
    for key, value in entry.items():
        if key in IGNORED_KEYS:
            problems.warn(f"{key!r} ignored: {IGNORED_KEYS[key]}")
        elif key not in FIELDS:
            if key not in SILENT_KEYS:
                problems.warn(f"{key!r} is not a kohya prompt key; ignored{_did_you_mean(key, FIELDS)}")
        else:
            converted = _convert(key, value, key, problems)
            if converted is not None:
                values[FIELDS[key][0]] = converted
    if not values.get("prompt") and not any(e.startswith("prompt:") for e in problems.errors):
        problems.error("prompt: missing or empty")
    return None if problems.errors else PromptSpec(**values)


def _did_you_mean(name: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else f" (known: {', '.join(prefix + k for k in known)})"


def _line_entry(line: str, problems: Problems) -> dict:
    """kohya's dict of one prompt line: the prompt, then each ``--option value``."""
    prompt, *options = line.strip().split(" --")
    entry: dict = {"prompt": prompt}
    for option in options:
        name, _, value = option.strip().partition(" ")
        name, flag = name.lower(), f"--{name}"
        if name in IGNORED:
            problems.warn(f"{flag} ignored: {IGNORED[name][1]}")
        elif name not in LINE_OPTIONS:
            problems.warn(f"{flag} is not a kohya sample option; ignored{_did_you_mean(name, LINE_OPTIONS, '--')}")
        elif not value.strip() and name != "n":
            problems.error(f"{flag}: needs a value")
        else:
            converted = _convert(LINE_OPTIONS[name], value, flag, problems)
            if converted is not None:
                entry[LINE_OPTIONS[name]] = converted
    return entry


def _parse(entry: object, problems: Problems) -> PromptSpec | None:
    if isinstance(entry, str):
        if not entry.strip() or entry.strip().startswith("#"):
            return None
        return _spec(_line_entry(entry, problems), problems)
    if isinstance(entry, dict):
        return _spec(dict(entry), problems)
    problems.error(f"expected a prompt line or a table/object, got {entry!r}")
    return None


def parse_prompt_line(line: str, where: str = "") -> PromptSpec | None:
    """One kohya prompt line; None for a blank or ``#`` comment line; ConfigError naming every bad option."""
    problems = Problems(where)
    spec = _parse(line, problems)
    problems.raise_if_any()
    return spec


def prompt_from_dict(entry: dict, where: str = "") -> PromptSpec:
    """A PromptSpec from kohya's dict form (toml/json); ConfigError naming every key at fault."""
    problems = Problems(where)
    spec = _spec(dict(entry), problems)
    problems.raise_if_any()
    return spec


def _read_txt(path: Path) -> list[tuple[str, object]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"{path}:{n}", line) for n, line in enumerate(lines, start=1)]


def _read_toml(path: Path) -> list[tuple[str, object]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"evaluate.prompt_file: {path}: not valid TOML ({error})") from None
    table = data.get("prompt")
    if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
        raise ConfigError(f"evaluate.prompt_file: {path}: expected a [prompt] table with [[prompt.subset]] entries")
    defaults = {k: v for k, v in table.items() if k != "subset"}
    # kohya merges each subset over the [prompt] defaults (and fails on a repeated key); the subset wins here.
    return [(f"{path} [[prompt.subset]] #{n}", defaults | sub) for n, sub in enumerate(table["subset"], start=1)]


def _read_json(path: Path) -> list[tuple[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"evaluate.prompt_file: {path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(data, list):
        raise ConfigError(f"evaluate.prompt_file: {path}: expected a JSON list of prompts")
    return [(f"{path} entry {n}", entry) for n, entry in enumerate(data, start=1)]


READERS = {".txt": _read_txt, ".toml": _read_toml, ".json": _read_json}


def _read_prompt_file(name: str) -> list[tuple[str, object]]:
    path = Path(name).expanduser()
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"evaluate.prompt_file: {path}: unknown format; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise ConfigError(f"evaluate.prompt_file: {path} does not exist")
    try:
        return reader(path)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"evaluate.prompt_file: cannot read {path} ({error})") from None


def load_prompts(cfg) -> list[PromptSpec]:
    """The evaluation prompts of an EvaluateConfig: its prompt_file when set, else its prompts list.

    Every bad entry is reported in one ConfigError, one ``file:line: problem`` per row.
    """
    check_sampler(cfg.sampler)
    if cfg.prompt_file:
        entries, source = _read_prompt_file(cfg.prompt_file), "evaluate.prompt_file"
    else:
        entries = [(f"evaluate.prompts[{i}]", text) for i, text in enumerate(cfg.prompts)]
        source = "evaluate.prompts"
    prompts, bad, rows = [], 0, []
    for where, entry in entries:
        problems = Problems(where)
        spec = _parse(entry, problems)
        bad += bool(problems.errors)
        rows += [f"  - {where}: {error}" for error in problems.errors]
        if spec is not None:
            prompts.append(spec)
    if bad:
        named = f" in {cfg.prompt_file}" if cfg.prompt_file else ""
        header = f"{source}: {bad} bad prompt{'s' if bad > 1 else ''}{named} (all listed):"
        raise ConfigError("\n".join([header, *rows]))
    if not prompts:
        raise ConfigError(f"{source}: {cfg.prompt_file + ': ' if cfg.prompt_file else ''}no prompts found")
    return prompts
