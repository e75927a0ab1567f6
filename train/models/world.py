"""The world's base model: Stable Diffusion 1.5's pipeline at the world's scale, pretrained on the world.

Every part is SD1.5's class (``UNet2DConditionModel`` with cross-attention,
``AutoencoderKL`` downsampling by 8, ``CLIPTextModel`` with a CLIP BPE
tokenizer, SD1.5's scaled-linear noise schedule), small enough to train on
two CPU cores. ``train/models/world_training.py`` trains it; the trained folder
ships in the package (``WORLD_MODEL_DIR``, diffusers layout, fp16
safetensors) and loads through ``load_base_model``, as a user's SD1.5 folder does.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from train.config import WORLD_DIR  # noqa: E402
from train.models.layouts import clip_text_config, sd_vae  # noqa: E402
from train.models.tiny import SD15_SCHEDULER  # noqa: E402
from train.models.world_tokenizer import MAX_TOKENS  # noqa: E402

ASSETS_DIR = Path(WORLD_DIR)
WORLD_MODEL_DIR = ASSETS_DIR / "world-sd15"
TEXT_HIDDEN_SIZE = 64
LATENT_CHANNELS = 4


def make_unet() -> UNet2DConditionModel:
    """SD1.5's layout (cross-attention at every level but the lowest) on 8x8 latents."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        # diffusers' legacy name: the head count, as SD1.5's 8.
        attention_head_dim=4,
        norm_num_groups=16,
    )


def make_vae(scaling_factor: float = 0.18215) -> AutoencoderKL:
    return sd_vae((16, 32, 64, 64), norm_num_groups=16, scaling_factor=scaling_factor, latent_channels=LATENT_CHANNELS)


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(clip_text_config(tokenizer, TEXT_HIDDEN_SIZE, 4 * TEXT_HIDDEN_SIZE, MAX_TOKENS))


def make_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SD15_SCHEDULER, prediction_type="epsilon")
