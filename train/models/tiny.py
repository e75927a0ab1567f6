"""A tiny SD1.5-shaped pipeline with random weights, built locally.

It has every part of Stable Diffusion 1.5 (cross-attention U-Net, a VAE that
downsamples by 8, a CLIP text encoder and BPE tokenizer, SD1.5's noise
schedule) at a size where a training step on CPU takes milliseconds. The
embedded default run and the tests use it, so nothing ever needs the hub.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from train.atomic import atomic_dir  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402
from train.models.loading import diffusers_folder_problems  # noqa: E402

MAX_TOKENS = 77
TEXT_HIDDEN_SIZE = 32
# Common English letter pairs, so prompts tokenize into a few multi-char tokens.
BPE_MERGES = [("t", "h"), ("h", "e</w>"), ("i", "n"), ("a", "n"), ("e", "r"), ("o", "n"), ("r", "e"), ("th", "e</w>")]

# SD1.5's training noise schedule (v1-inference.yaml: linear_start/linear_end).
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "steps_offset": 1,
}


def _write_tokenizer_files(folder: Path) -> None:
    """Write a CLIP-style vocab.json + merges.txt: bytes, bytes</w>, merges, specials."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + ["".join(pair) for pair in BPE_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = ["#version: 0.2"] + [" ".join(pair) for pair in BPE_MERGES]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def build_tiny_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_TOKENS, local_files_only=True)


def _build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _build_vae() -> AutoencoderKL:
    # Four levels = three 2x downsamples, so 64 px images become 8x8 latents, as in SD.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_tiny_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """The tiny pipeline in memory; same seed -> same weights."""
    tokenizer = build_tiny_tokenizer()
    # fork_rng keeps the caller's global RNG untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _build_unet()
        vae = _build_vae()
        text_encoder = _build_text_encoder(tokenizer)
    scheduler = DDPMScheduler(**SD15_SCHEDULER, prediction_type=prediction_type)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sd15(path: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Save the tiny pipeline at ``path`` (diffusers layout, safetensors) unless a model is already there."""
    target = Path(path)
    if target.exists():
        if target.is_dir() and not diffusers_folder_problems(target):
            return target
        # Never overwrite what is there: it may be the user's own files.
        raise ModelLoadError(f"model.path: {target} exists but is not a valid model; delete it or choose another path")
    pipeline = make_tiny_pipeline(seed=seed, prediction_type=prediction_type)
    with atomic_dir(target) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    return target


def build_tiny_sd15_vpred(path: str | os.PathLike, seed: int = 0) -> Path:
    """The tiny model with a v-prediction scheduler, like SD 2.x 768-v."""
    return build_tiny_sd15(path, seed=seed, prediction_type="v_prediction")
