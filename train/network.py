"""LoRA / LoCon networks on the U-Net and text encoder, built with peft.

kohya's ``networks.lora`` is the reference: the same layers, the same
``alpha / dim`` scale (peft's ``lora_alpha / r`` with ``lora_alpha = alpha``),
the same init (A random, B zero, so a fresh network changes nothing).
Files are saved and read in kohya's format by ``train.lora_format``.
"""

from __future__ import annotations

import os
from typing import NoReturn

import torch
from peft import LoraConfig, inject_adapter_in_model

from train.config import NetworkConfig
from train.errors import ConfigError, UserError
from train.lora_format import (
    ADAPTER,
    KOHYA_KEY_SUFFIXES,
    canonical_module_name,
    kohya_lora_layers,
    layer_alpha,
    lora_layers,
    read_lora,
)

# LoCon, as kohya's lora.py: inside ResnetBlock2D / Downsample2D / Upsample2D every
# Linear and 1x1 conv gets dim/alpha, every 3x3 conv gets conv_dim/conv_alpha.
LOCON_LINEAR_TARGETS = ["time_emb_proj", "conv_shortcut"]
LOCON_CONV_PATTERNS = [r"resnets\.\d+\.conv[12]", r"(down|up)samplers\.\d+\.conv"]
LOCON_CONV_TARGETS = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]

# cfg.init_lora_weights -> peft's init_lora_weights; both draw A at random and zero B.
LORA_INITS = {"kaiming": True, "default": True, "gaussian": "gaussian"}

WEIGHTS_KEY = "train.network_weights"


def unet_lora_config(cfg: NetworkConfig) -> LoraConfig | None:
    if not cfg.train_unet:
        return None
    targets = list(cfg.unet_target_modules)
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    if cfg.conv_dim is not None:
        targets += LOCON_LINEAR_TARGETS + LOCON_CONV_TARGETS
        for pattern in LOCON_CONV_PATTERNS:
            rank_pattern[pattern] = cfg.conv_dim
            alpha_pattern[pattern] = cfg.effective_conv_alpha
    return LoraConfig(
        r=cfg.dim,
        lora_alpha=cfg.effective_alpha,
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        init_lora_weights=_peft_init(cfg),
    )


def text_encoder_lora_config(cfg: NetworkConfig) -> LoraConfig | None:
    if not cfg.train_text_encoder:
        return None
    return LoraConfig(
        r=cfg.dim,
        lora_alpha=cfg.effective_alpha,
        target_modules=list(cfg.text_encoder_target_modules),
        init_lora_weights=_peft_init(cfg),
    )


def _peft_init(cfg: NetworkConfig) -> bool | str:
    if cfg.init_lora_weights not in LORA_INITS:
        raise ConfigError(
            f"network.init_lora_weights: must be one of {sorted(LORA_INITS)}, got {cfg.init_lora_weights!r}"
        )
    return LORA_INITS[cfg.init_lora_weights]


def _add_lora(model: torch.nn.Module, config: LoraConfig, seed: int, key: str) -> list[torch.nn.Parameter]:
    if lora_layers(model):
        raise RuntimeError(f"apply_lora: the model already has LoRA layers ({key})")
    # peft draws the init from the global RNG (on CPU, before moving to the model's
    # device); fork it so the init depends on `seed` only and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            # peft itself, not the model's add_adapter: transformers' wrapper demands peft
            # releases newer than some installs have, and adds nothing we use.
            inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        except ValueError as error:  # peft: no module matches the target names
            raise ConfigError(f"{key}: {error}") from error
    params = []
    for layer in lora_layers(model).values():
        for module in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
            module.to(torch.float32)  # train LoRA in fp32 even over an fp16/bf16 base, as kohya does
            params.extend(module.parameters())
    for param in params:
        param.requires_grad_(True)
    return params


def apply_lora(
    unet: torch.nn.Module, text_encoder: torch.nn.Module | None, cfg: NetworkConfig, seed: int
) -> dict[str, list[torch.nn.Parameter]]:
    """Freeze both models, add LoRA layers, return the trainable parameters per model."""
    unet.requires_grad_(False)
    if text_encoder is not None:
        text_encoder.requires_grad_(False)
    params: dict[str, list[torch.nn.Parameter]] = {"unet": [], "text_encoder": []}
    unet_config = unet_lora_config(cfg)
    if unet_config is not None:
        params["unet"] = _add_lora(unet, unet_config, seed, "network.unet_target_modules")
    te_config = text_encoder_lora_config(cfg)
    if te_config is not None:
        if text_encoder is None:
            raise ConfigError("network.train_text_encoder: set, but no text encoder was given")
        params["text_encoder"] = _add_lora(text_encoder, te_config, seed, "network.text_encoder_target_modules")
    return params


def lora_layer_count(*models: torch.nn.Module | None) -> int:
    return sum(len(lora_layers(model)) for model in models)


def _group_by_module(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """kohya module name -> {suffix: tensor}; also the keys that are not LoRA keys at all."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        module_name, _, suffix = key.partition(".")
        if suffix not in KOHYA_KEY_SUFFIXES:
            unknown.append(key)
            continue
        modules.setdefault(canonical_module_name(module_name), {})[suffix] = tensor
    return modules, unknown


def _fail(path: str | os.PathLike, problem: str) -> NoReturn:
    raise ConfigError(f"{WEIGHTS_KEY}: {path}: {problem}")


def _examples(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:3])
    return f"{len(names)} (e.g. {shown})"


def load_network_weights(
    path: str | os.PathLike, unet: torch.nn.Module, text_encoder: torch.nn.Module | None, cfg: NetworkConfig
) -> None:
    """Load a kohya LoRA file into the layers ``apply_lora`` added, to resume training.

    The file's alpha may differ from the config's: lora_up is rescaled by
    file_alpha / config_alpha so the loaded network computes the saved one's output.
    Ranks and alphas are read from the layers ``apply_lora(..., cfg)`` built.
    """
    try:
        tensors, _ = read_lora(path)
    except UserError as error:
        raise ConfigError(f"{WEIGHTS_KEY}: {error}") from error
    modules, unknown = _group_by_module(tensors)
    if unknown:
        _fail(path, f"not a kohya LoRA file; unexpected keys {_examples(unknown)}")
    layers = kohya_lora_layers(unet, text_encoder)
    extra = [name for name in modules if name not in layers]
    missing = [name for name in layers if name not in modules]
    if extra:
        _fail(
            path,
            f"modules the configured network does not have: {_examples(extra)}; check network.conv_dim, "
            "network.train_text_encoder and the target modules",
        )
    if missing:
        _fail(path, f"lacks modules the configured network trains: {_examples(missing)}")

    with torch.no_grad():
        for name, layer in layers.items():
            parts = modules[name]
            if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
                _fail(path, f"{name} needs both lora_down.weight and lora_up.weight")
            down_param = layer.lora_A[ADAPTER].weight
            up_param = layer.lora_B[ADAPTER].weight
            down, up = parts["lora_down.weight"], parts["lora_up.weight"]
            if down.shape != down_param.shape or up.shape != up_param.shape:
                rank_key = "network.conv_dim" if down.dim() == 4 and down.shape[-1] > 1 else "network.dim"
                _fail(
                    path,
                    f"{name} has rank {down.shape[0]} (shapes {tuple(down.shape)}, {tuple(up.shape)}) "
                    f"but the configured network has rank {layer.r[ADAPTER]} ({rank_key})",
                )
            alpha = parts.get("alpha", torch.tensor(float(down.shape[0])))  # kohya: no alpha means alpha = rank
            if alpha.numel() != 1:
                _fail(path, f"{name}.alpha must be a single number, has shape {tuple(alpha.shape)}")
            file_alpha = float(alpha)
            down_param.copy_(down.to(down_param.dtype))
            up_param.copy_((up.double() * (file_alpha / layer_alpha(layer))).to(up_param.dtype))
