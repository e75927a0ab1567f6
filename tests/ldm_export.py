"""Test helper: turn a diffusers SD pipeline into an original LDM/CompVis checkpoint.

The inverse of diffusers' single-file converter, after diffusers'
scripts/convert_diffusers_to_original_stable_diffusion.py, but with the block
counts read from the model configs so it also fits the tiny model (2 U-Net
levels, 1 resnet per level, 4 VAE levels).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

# (LDM, diffusers) names that are the same at every level.
UNET_TOP_LEVEL = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]
UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]
VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def unet_block_prefixes(config) -> list[tuple[str, str]]:
    """(LDM, diffusers) prefixes of each U-Net block; LDM numbers blocks in one flat sequence."""
    per_level = config.layers_per_block
    levels = len(config.down_block_types)
    pairs = []
    for i, (down_type, up_type) in enumerate(zip(config.down_block_types, config.up_block_types, strict=True)):
        for j in range(per_level):
            sd_index = (per_level + 1) * i + j + 1
            pairs.append((f"input_blocks.{sd_index}.0.", f"down_blocks.{i}.resnets.{j}."))
            if "CrossAttn" in down_type:
                pairs.append((f"input_blocks.{sd_index}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per_level + 1):
            sd_index = (per_level + 1) * i + j
            pairs.append((f"output_blocks.{sd_index}.0.", f"up_blocks.{i}.resnets.{j}."))
            if "CrossAttn" in up_type:
                pairs.append((f"output_blocks.{sd_index}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(per_level + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            upsample_slot = 2 if "CrossAttn" in up_type else 1
            last_up = (per_level + 1) * i + per_level
            pairs.append((f"output_blocks.{last_up}.{upsample_slot}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def convert_unet(unet) -> dict[str, torch.Tensor]:
    blocks = unet_block_prefixes(unet.config)
    converted = {}
    for key, tensor in unet.state_dict().items():
        new_key = key
        for sd, hf in UNET_TOP_LEVEL:
            if new_key.startswith(hf):
                new_key = sd + new_key[len(hf) :]
        for sd, hf in blocks:
            if new_key.startswith(hf):
                new_key = sd + new_key[len(hf) :]
                if "resnets" in hf:
                    for sd_part, hf_part in UNET_RESNET:
                        new_key = new_key.replace(f".{hf_part}.", f".{sd_part}.")
                break
        converted[UNET_PREFIX + new_key] = tensor
    return converted


def vae_prefixes(config) -> list[tuple[str, str]]:
    levels = len(config.down_block_types)
    per_level = config.layers_per_block
    pairs = [
        ("nin_shortcut", "conv_shortcut"),
        ("norm_out", "conv_norm_out"),
        ("mid.attn_1.", "mid_block.attentions.0."),
    ]
    for i in range(levels):
        pairs += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(per_level)]
        # diffusers counts decoder levels from the bottom, LDM from the top.
        pairs += [
            (f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
            for j in range(per_level + 1)
        ]
        if i < levels - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
    pairs += [(f"mid.block_{j + 1}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def convert_vae(vae) -> dict[str, torch.Tensor]:
    prefixes = vae_prefixes(vae.config)
    converted = {}
    for key, tensor in vae.state_dict().items():
        new_key = key
        for sd, hf in prefixes:
            new_key = new_key.replace(hf, sd)
        if ".attn_1." in new_key:
            for sd, hf in VAE_ATTENTION:
                new_key = new_key.replace(f".attn_1.{hf}", f".attn_1.{sd}")
            # LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers.
            if new_key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and tensor.ndim == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        converted[VAE_PREFIX + new_key] = tensor
    return converted


def convert_text_encoder(text_encoder) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; LDM keys keep the `text_model.` level.
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        converted[TEXT_PREFIX + inner] = tensor
    return converted


def pipeline_to_ldm_state_dict(pipeline) -> dict[str, torch.Tensor]:
    state = {}
    state.update(convert_unet(pipeline.unet))
    state.update(convert_vae(pipeline.vae))
    state.update(convert_text_encoder(pipeline.text_encoder))
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def export_ldm_safetensors(pipeline, path: str | Path) -> Path:
    target = Path(path)
    save_file(pipeline_to_ldm_state_dict(pipeline), str(target))
    return target
