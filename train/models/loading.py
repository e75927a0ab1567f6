"""Load the frozen SD1.x/2.x or SDXL base model from a diffusers folder or one checkpoint file.

``load_base_model`` runs the pre-flight's ``ensure_model_available``
(train/models/checks.py) again, then loads. Every problem a user can fix
becomes one ``ModelLoadError`` naming model.path or model.config_dir. Nothing
here ever contacts the hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pickle  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file as load_safetensors  # noqa: E402

from train.config import PREDICTION_TYPES, ModelConfig  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402
from train.models import hashing  # noqa: E402
from train.models.checks import (  # noqa: E402
    SDXL_WEIGHT_COMPONENTS,
    WEIGHT_COMPONENTS,
    _check_config_dir,
    _pickle_refused,
    _weights_only_reason,
    ensure_model_available,
    folder_architecture,
    weight_files,
)

if TYPE_CHECKING:  # diffusers and transformers load with the model, after the pre-flight (seconds on 2 cores)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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


__all__ = ["BaseModel", "load_base_model", "read_checkpoint"]
