"""The full-size SD1.5 architecture with random weights, for speed and memory benchmarks.

Same shapes as runwayml's v1-5 (U-Net 860 M, VAE 84 M, CLIP ViT-L/14 text
encoder 123 M), built from configs; no weights are downloaded. Saved in
diffusers layout so the benchmark loads it through the trainer's own loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from train.atomic import atomic_dir
from train.models.tiny import SD15_SCHEDULER, build_tiny_tokenizer


def build_random_sd15(path: Path, seed: int = 0) -> Path:
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tiny_tokenizer(),
        scheduler=DDPMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(path) as tmp:
        pipe.save_pretrained(tmp)
    return path
