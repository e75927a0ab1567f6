"""Load the frozen SD1.x/2.x or SDXL base model from a diffusers folder or one checkpoint file.

``ensure_model_available`` is the cheap pre-flight check (no weights read) run
before any GPU time; ``load_base_model`` runs it again, then loads. Every
problem a user can fix becomes one ``ModelLoadError`` naming model.path or
model.config_dir. Nothing here ever contacts the hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file as load_safetensors  # noqa: E402

from train.config import PREDICTION_TYPES, ModelConfig  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402
from train.models import hashing  # noqa: E402

if TYPE_CHECKING:  # diffusers and transformers load with the model, after the pre-flight (seconds on 2 cores)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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


@dataclass
class BaseModel:
    """The frozen base model; the SDXL-only parts are None for SD 1.x/2.x."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler  # training schedule; prediction_type already resolved
    prediction_type: str  # "epsilon" | "v_prediction"
    model_hash: str  # sha256 of the base weights (the file, or the folder's weight files)
    vae_identity: str  # short hash of VAE config + weights; keys cached latents
    source: str  # the absolute path loaded
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's second encoder (pooled embedding)
    tokenizer_2: CLIPTokenizer | None = None
    architecture: str = "sd"  # "sd" | "sdxl"


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


def read_checkpoint(path: Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint, unwrapped from any nested "state_dict"."""
    if path.suffix.lower() == ".safetensors":
        try:
            state = load_safetensors(path)
        except Exception as exc:  # malformed header or truncated data
            raise ModelLoadError(f"model.path: {path} is not a readable safetensors file ({exc})") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
        except pickle.UnpicklingError as exc:
            reason = _weights_only_reason(exc)
            if not allow_unsafe_pickle and "global" in reason.lower():
                raise _pickle_refused(path, reason) from exc
            raise ModelLoadError(
                f"model.path: {path} is not a readable PyTorch checkpoint ({reason}); is the file damaged?"
            ) from exc
        except Exception as exc:  # torch.load raises many types for damaged files
            raise ModelLoadError(f"model.path: {path} is not a readable PyTorch checkpoint ({exc})") from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise ModelLoadError(f"model.path: {path} holds no state dict of tensors")
    return tensors


def load_single_file_components(
    path: Path, config_dir: Path, allow_unsafe_pickle: bool, architecture: str = "sd"
) -> dict[str, torch.nn.Module]:
    """Convert an original (LDM, or SGM for SDXL) checkpoint into diffusers U-Net, VAE and CLIP text encoder(s)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    state = read_checkpoint(path, allow_unsafe_pickle)
    common = {"config": str(config_dir), "local_files_only": True, "torch_dtype": torch.float32}
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_single_file(state, subfolder="unet", **common),
        "vae": lambda: AutoencoderKL.from_single_file(state, subfolder="vae", **common),
        "text_encoder": lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModel, state, subfolder="text_encoder", **common
        ),
    }
    if architecture == "sdxl":
        # diffusers picks the checkpoint's OpenCLIP encoder (conditioner.embedders.1) by its keys and width.
        loaders["text_encoder_2"] = lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, state, subfolder="text_encoder_2", **common
        )
    modules = {}
    for name, load in loaders.items():
        try:
            module = load()
        except Exception as exc:  # diffusers' converters fail with many types on a mismatched file
            raise ModelLoadError(
                f"model.path: the {name} in {path} does not match {config_dir}/{name} "
                f"(model.config_dir) ({type(exc).__name__}: {exc})"
            ) from exc
        # Keys absent from the file stay on the meta device instead of raising.
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            raise ModelLoadError(f"model.path: {path} lacks weights for the {name} of {config_dir}/{name}")
        modules[name] = module
    return modules


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


def _resolve_prediction_type(cfg: ModelConfig, scheduler_config: dict, config_source: Path) -> str:
    prediction_type = cfg.prediction_type or scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"model.prediction_type: {config_source}/scheduler says {prediction_type!r}, which this trainer "
            f"does not support; set model.prediction_type to one of {PREDICTION_TYPES}"
        )
    return prediction_type


def _load_folder_components(folder: Path, architecture: str = "sd") -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    # fp32 whatever the files hold: the trainer casts for mixed precision itself.
    common = {"local_files_only": True, "torch_dtype": torch.float32}
    text = {"local_files_only": True, "dtype": torch.float32}
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common),
        "vae": lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", **common),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **text),
    }
    if architecture == "sdxl":
        loaders["text_encoder_2"] = lambda: CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2", **text
        )
    modules = {}
    for name, load in loaders.items():
        try:
            modules[name] = load()
        except Exception as exc:  # damaged files and config/weight mismatches surface as many types
            raise ModelLoadError(f"model.path: could not load {folder / name} ({type(exc).__name__}: {exc})") from exc
    return modules


def _load_tokenizer(config_source: Path, key: str, subfolder: str = "tokenizer") -> CLIPTokenizer:
    from transformers import CLIPTokenizer
    try:
        return CLIPTokenizer.from_pretrained(config_source, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{key}: could not load {config_source}/{subfolder}: {exc}") from exc


def _weight_components(architecture: str) -> tuple[str, ...]:
    """Components whose weights the model hash covers; SD's list is unchanged so SD hashes stay stable."""
    return WEIGHT_COMPONENTS + (SDXL_WEIGHT_COMPONENTS if architecture == "sdxl" else ())


def load_base_model(cfg: ModelConfig) -> BaseModel:
    """Load U-Net, VAE, text encoder(s), tokenizer(s) and training scheduler, frozen, in eval mode, fp32 on CPU."""
    from diffusers import DDPMScheduler
    ensure_model_available(cfg)
    path = Path(cfg.path).expanduser().resolve()
    if path.is_dir():
        config_source, config_key = path, "model.path"
        architecture = folder_architecture(path)
        modules = _load_folder_components(path, architecture)
        files = [f for c in _weight_components(architecture) for f in weight_files(path / c)]
        model_hash = hashing.files_sha256(files, path)
    else:
        config_source, config_key = _check_config_dir(cfg).resolve(), "model.config_dir"
        architecture = folder_architecture(config_source)
        modules = load_single_file_components(path, config_source, cfg.allow_unsafe_pickle, architecture)
        model_hash = hashing.file_sha256(path)
    tokenizer = _load_tokenizer(config_source, config_key)
    tokenizer_2 = _load_tokenizer(config_source, config_key, "tokenizer_2") if architecture == "sdxl" else None
    try:
        scheduler_config = DDPMScheduler.load_config(config_source, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_key}: could not read {config_source}/scheduler: {exc}") from exc
    prediction_type = _resolve_prediction_type(cfg, scheduler_config, config_source)
    noise_scheduler = DDPMScheduler.from_config(scheduler_config, prediction_type=prediction_type)
    for module in modules.values():
        module.eval().requires_grad_(False)
    for name in ("text_encoder", "text_encoder_2"):
        if name in modules:
            # peft looks for config.json under name_or_path when saving LoRA; without one it asks the hub.
            modules[name].name_or_path = modules[name].config._name_or_path = str(config_source / name)
    return BaseModel(
        unet=modules["unet"],
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        prediction_type=prediction_type,
        model_hash=model_hash,
        vae_identity=hashing.module_identity(modules["vae"]),
        source=str(path),
        text_encoder_2=modules.get("text_encoder_2"),
        tokenizer_2=tokenizer_2,
        architecture=architecture,
    )


__all__ = [
    "BaseModel",
    "PICKLE_SUFFIXES",
    "diffusers_folder_problems",
    "ensure_model_available",
    "folder_architecture",
    "load_base_model",
    "read_checkpoint",
]
