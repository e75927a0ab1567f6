"""diffusers U-Net module paths -> the original SGM layout's, which kohya's SDXL LoRA keys use.

kohya trains SDXL on the SGM U-Net, whose blocks are one flat sequence:
``input_blocks`` (conv_in, then per level ``layers_per_block`` resnet(+attention)
blocks and a downsampler), ``middle_block`` (resnet, attention, resnet) and
``output_blocks`` (per level ``layers_per_block + 1`` resnet(+attention) blocks,
the last one carrying the upsampler). A LoRA file named this way loads in
A1111, ComfyUI and diffusers (whose loader maps the names back).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# diffusers ResnetBlock2D part -> SGM ResBlock part.
RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Modules outside the block sequence.
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
MID_BLOCK = {("resnets", 0): "middle_block.0", ("attentions", 0): "middle_block.1", ("resnets", 1): "middle_block.2"}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.+))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?$")


def _config_value(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def _layers_per_block(config: Any) -> int:
    """SGM's flat numbering needs one resnet count for every level."""
    value = _config_value(config, "layers_per_block")
    if isinstance(value, int):
        return value
    counts = set(value)
    if len(counts) != 1:
        raise ValueError(f"SGM block names need the same layers_per_block at every level, got {value}")
    return counts.pop()


def _join(*parts: str | None) -> str:
    return ".".join(part for part in parts if part)


def _resnet_rest(rest: str | None, name: str) -> str | None:
    if rest is None:
        return None
    head, _, tail = rest.partition(".")
    if head not in RESNET_PARTS:
        raise ValueError(f"{name}: unknown resnet part {head!r}")
    return _join(RESNET_PARTS[head], tail)


def _sampler_rest(rest: str | None, name: str, sgm_conv: str) -> str:
    """diffusers calls both samplers' convolution ``conv``; SGM's downsampler calls it ``op``."""
    head, _, tail = (rest or "").partition(".")
    if head != "conv":
        raise ValueError(f"{name}: expected the sampler's conv, got {rest!r}")
    return _join(sgm_conv, tail)


def _down_block(name: str, level: int, kind: str, index: int, rest: str | None, per_level: int) -> str:
    first = 1 + level * (per_level + 1)
    if kind == "downsamplers":
        return _join(f"input_blocks.{first + per_level}.0", _sampler_rest(rest, name, "op"))
    if index >= per_level:
        raise ValueError(f"{name}: down blocks have {per_level} layers")
    sub, rest = (0, _resnet_rest(rest, name)) if kind == "resnets" else (1, rest)
    return _join(f"input_blocks.{first + index}.{sub}", rest)


def _up_block(name: str, level: int, kind: str, index: int, rest: str | None, config: Any) -> str:
    per_level = _layers_per_block(config)
    first = level * (per_level + 1)
    if kind == "upsamplers":
        has_attention = "CrossAttn" in _config_value(config, "up_block_types")[level]
        return _join(
            f"output_blocks.{first + per_level}.{2 if has_attention else 1}", _sampler_rest(rest, name, "conv")
        )
    if index > per_level:
        raise ValueError(f"{name}: up blocks have {per_level + 1} layers")
    sub, rest = (0, _resnet_rest(rest, name)) if kind == "resnets" else (1, rest)
    return _join(f"output_blocks.{first + index}.{sub}", rest)


def sgm_module_name(diffusers_name: str, unet_config: Any) -> str:
    """The SGM dotted path of a diffusers U-Net module (or parameter) path; ValueError if it has none."""
    for prefix, sgm in TOP_LEVEL.items():
        if diffusers_name == prefix or diffusers_name.startswith(prefix + "."):
            return sgm + diffusers_name[len(prefix) :]
    if match := _MID.match(diffusers_name):
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if (kind, index) not in MID_BLOCK:
            raise ValueError(f"{diffusers_name}: the mid block has resnets 0-1 and attention 0")
        return _join(MID_BLOCK[kind, index], _resnet_rest(rest, diffusers_name) if kind == "resnets" else rest)
    match = _BLOCK.match(diffusers_name)
    if not match:
        raise ValueError(f"{diffusers_name}: not a U-Net module with an SGM name")
    side, level, kind, index, rest = match.group(1), int(match.group(2)), match.group(3), int(match.group(4)), match[5]
    if side == "down_blocks" and kind != "upsamplers":
        return _down_block(diffusers_name, level, kind, index, rest, _layers_per_block(unet_config))
    if side == "up_blocks" and kind != "downsamplers":
        return _up_block(diffusers_name, level, kind, index, rest, unet_config)
    raise ValueError(f"{diffusers_name}: {side} have no {kind}")


def kohya_sgm_lora_name(diffusers_name: str, unet_config: Any) -> str:
    """kohya's SDXL LoRA module name: ``lora_unet_`` + the SGM path with dots as underscores."""
    return "lora_unet_" + sgm_module_name(diffusers_name, unet_config).replace(".", "_")


__all__ = ["kohya_sgm_lora_name", "sgm_module_name"]
