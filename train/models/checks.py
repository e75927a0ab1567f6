"""Is ``model.path`` loadable? The cheap checks run before any model library loads.

``ensure_model_available`` is the pre-flight's last check (no weights read):
a diffusers folder's components and weights, a single file's header or
pickle globals, ``model.config_dir`` and ``model.architecture``. Every
problem a user can fix becomes one ``ModelLoadError`` naming the key.
``train/models/loading.py`` runs it again, then loads.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

from train.config import ModelConfig
from train.errors import ModelLoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)

# The parts the trainer needs; each must be a subfolder of a diffusers folder.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
# SDXL's extra parts, required when model_index.json lists them.
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")
SDXL_WEIGHT_COMPONENTS = ("text_encoder_2",)
ARCHITECTURE_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}
# Names from_pretrained reads (no variants such as .fp16), safetensors first.
_WEIGHT_PATTERNS = (
    re.compile(r"^(diffusion_pytorch_model|model)(-\d+-of-\d+)?\.safetensors$"),
    re.compile(r"^(diffusion_pytorch_model|pytorch_model)(-\d+-of-\d+)?\.bin$"),
)


def weight_files(component_dir: Path) -> list[Path]:
    """The weight files from_pretrained would read for one component, sorted; [] if none."""
    if not component_dir.is_dir():
        return []
    for pattern in _WEIGHT_PATTERNS:
        found = sorted(p for p in component_dir.iterdir() if p.is_file() and pattern.match(p.name))
        if found:
            return found
    return []


def _read_index(folder: Path) -> dict:
    """model_index.json as a dict; OSError/ValueError when missing or malformed."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    if not isinstance(index, dict):
        raise ValueError("not a JSON object")
    return index


def _lists(index: dict, name: str) -> bool:
    """Whether model_index.json names a real component (diffusers writes [null, null] for an absent one)."""
    entry = index.get(name)
    return isinstance(entry, list) and any(entry)


def index_architecture(index: dict) -> str:
    """'sdxl' when the index lists a second text encoder, else 'sd'."""
    return "sdxl" if _lists(index, "text_encoder_2") else "sd"


def folder_architecture(folder: Path) -> str:
    """The architecture of a diffusers folder that ``diffusers_folder_problems`` accepted."""
    return index_architecture(_read_index(folder))


def _component_problems(folder: Path, name: str, need_weights: bool) -> list[str]:
    part = folder / name
    if name.startswith("tokenizer"):
        required = () if (part / "tokenizer.json").is_file() else ("vocab.json", "merges.txt")
    else:
        required = ("scheduler_config.json",) if name == "scheduler" else ("config.json",)
    problems = []
    missing = [f for f in required if not (part / f).is_file()]
    if missing:
        problems.append(f"{part} lacks {', '.join(missing)}")
    weighted = name in WEIGHT_COMPONENTS + SDXL_WEIGHT_COMPONENTS
    if need_weights and weighted and not weight_files(part):
        problems.append(f"{part} has no weights (expected diffusion_pytorch_model.safetensors or model.safetensors)")
    return problems


def diffusers_folder_problems(folder: Path, need_weights: bool = True) -> list[str]:
    """What is missing for ``folder`` to be a usable SD or SDXL diffusers folder ([] when fine)."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return [f"no model_index.json in {folder} (not a diffusers-layout folder)"]
    try:
        index = _read_index(folder)
    except (OSError, ValueError) as exc:
        return [f"{index_file} is not valid JSON ({exc})"]
    problems = [f"model_index.json lists no '{name}' component" for name in COMPONENTS if name not in index]
    names = COMPONENTS
    if any(_lists(index, name) for name in SDXL_COMPONENTS):
        # SDXL: both extra parts or neither; a lone one is a damaged or unsupported folder.
        problems += [f"model_index.json lists no '{n}' component" for n in SDXL_COMPONENTS if not _lists(index, n)]
        names += SDXL_COMPONENTS
    for name in names:
        problems += _component_problems(folder, name, need_weights)
    return problems


def _raise_problems(key: str, path: Path, problems: list[str]) -> None:
    if problems:
        details = "\n".join(f"  - {p}" for p in problems)
        raise ModelLoadError(f"{key}: {path} is not a usable Stable Diffusion model:\n{details}")


def _check_architecture(cfg: ModelConfig, found: str, key: str, source: Path) -> None:
    """model.architecture, when set, must be what the folder holds: a wrong guess would train garbage."""
    if cfg.architecture and cfg.architecture != found:
        why = "lists" if found == "sdxl" else "lists no"
        raise ModelLoadError(
            f"model.architecture: set to {cfg.architecture!r}, but {source} ({key}) holds an "
            f"{ARCHITECTURE_NAMES[found]} model (its model_index.json {why} text_encoder_2); "
            f"set model.architecture={found}, or leave it null to detect it"
        )


def _pickle_refused(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"model.path: {path} is a pickle checkpoint that weights_only loading refuses ({why}); unpickling it "
        "could run arbitrary code. Convert it to .safetensors, or, if you trust its source, "
        "set model.allow_unsafe_pickle=true"
    )


def _weights_only_reason(exc: Exception) -> str:
    """The specific cause inside torch's long weights_only error text."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(boilerplate)]
    return " ".join(specific or lines[:1])


def check_checkpoint_file(path: Path, allow_unsafe_pickle: bool) -> None:
    """Cheap checks on a single file: the safetensors header parses; a pickle holds only allowed types."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(path, framework="pt") as handle:
                has_tensors = bool(list(handle.keys()))
        except Exception as exc:  # safetensors raises its own error types for any malformed file
            raise ModelLoadError(f"model.path: {path} is not a readable safetensors file ({exc})") from exc
        if not has_tensors:
            raise ModelLoadError(f"model.path: {path} holds no tensors")
        return
    if allow_unsafe_pickle or not zipfile.is_zipfile(path):
        return  # legacy (non-zip) pickles are checked when torch.load(weights_only=True) reads them
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:  # a damaged zip or pickle stream
        raise ModelLoadError(f"model.path: {path} is not a readable PyTorch checkpoint ({exc})") from exc
    if unsafe:
        raise _pickle_refused(path, "it contains " + ", ".join(unsafe[:5]))


def _check_config_dir(cfg: ModelConfig) -> Path:
    if not cfg.config_dir:
        raise ModelLoadError(
            f"model.config_dir: required for the single-file checkpoint {cfg.path}; set it to a local "
            "diffusers-layout folder with the component configs (model_index.json, unet/config.json, ...)"
        )
    config_dir = Path(cfg.config_dir).expanduser()
    if not config_dir.is_dir():
        raise ModelLoadError(f"model.config_dir: {config_dir} does not exist or is not a folder")
    _raise_problems("model.config_dir", config_dir, diffusers_folder_problems(config_dir, need_weights=False))
    return config_dir


def ensure_model_available(cfg: ModelConfig) -> None:
    """Build the tiny model if asked, else check the path looks loadable, without reading weights."""
    if not cfg.path or cfg.path == "???":
        raise ModelLoadError(
            "model.path: not set; give a diffusers folder or a checkpoint file, e.g. model.path=/models/sd15"
        )
    path = Path(cfg.path).expanduser()
    if cfg.build_tiny and not path.exists():
        from train.models.tiny import build_tiny_sd15, build_tiny_sdxl  # lazy: tiny imports this module

        (build_tiny_sdxl if cfg.architecture == "sdxl" else build_tiny_sd15)(path)
    if not path.exists():
        raise ModelLoadError(f"model.path: {path} does not exist (a diffusers folder or a checkpoint file)")
    if path.is_dir():
        _raise_problems("model.path", path, diffusers_folder_problems(path))
        _check_architecture(cfg, folder_architecture(path), "model.path", path)
        return
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(
            f"model.path: {path} has an unknown format; give a diffusers folder or one of {SINGLE_FILE_SUFFIXES}"
        )
    check_checkpoint_file(path, allow_unsafe_pickle=cfg.allow_unsafe_pickle)
    config_dir = _check_config_dir(cfg)
    _check_architecture(cfg, folder_architecture(config_dir), "model.config_dir", config_dir)
