"""SD's part layouts at any scale, shared by the tiny random models and the world's trained ones.

Each takes only what differs between the two (widths, group counts), so that
both build the same classes with the same wiring as Stable Diffusion's parts.
"""

from __future__ import annotations

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTokenizer


def sd_vae(block_out_channels: tuple[int, ...], norm_num_groups: int, scaling_factor: float = 0.18215,
           latent_channels: int = 4) -> AutoencoderKL:
    """Four levels = three 2x downsamples: 64 px images become 8x8 latents, as SD's 512 px become 64x64."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        latent_channels=latent_channels,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int, intermediate_size: int, max_tokens: int,
                     **extra) -> CLIPTextConfig:
    """A two-layer CLIP text tower over ``tokenizer``'s vocabulary and special tokens."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
