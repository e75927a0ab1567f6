"""Tiny SD1.5- and SDXL-shaped pipelines with random weights, built locally.

The SD1.5 one has every part of Stable Diffusion 1.5 (cross-attention U-Net, a
VAE that downsamples by 8, a CLIP text encoder and BPE tokenizer, SD1.5's noise
schedule); the SDXL one has SDXL's (two text encoders, a pooled embedding and
size conditioning, SDXL's block layout), each at a size where a training step
on CPU takes milliseconds. The embedded default run and the tests use them, so
nothing ever needs the hub.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from train.atomic import atomic_dir  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402
from train.models.checks import diffusers_folder_problems, folder_architecture  # noqa: E402
from train.models.layouts import clip_text_config, sd_vae  # noqa: E402

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
# SDXL trains on the same betas; it ships an Euler scheduler with "leading" spacing whose config,
# like SDXL's own, keeps clip_sample=false for the DDPMScheduler the trainer builds from it.
SDXL_SCHEDULER = {**SD15_SCHEDULER, "timestep_spacing": "leading"}
SDXL_VAE_SCALING = 0.13025
# The second encoder is wider than the first, as in SDXL (768 vs 1280): diffusers' single-file
# loader tells the two CLIP models of a checkpoint apart by width, not by subfolder.
TEXT2_HIDDEN_SIZE = 48
TEXT2_PROJECTION_DIM = 32
SDXL_TIME_EMBED_DIM = 8
# SDXL's add_time_ids: original (h, w), crop (top, left), target (h, w).
SDXL_TIME_IDS = 6
# SDXL's tokenizer_2 (OpenCLIP's) pads with "!" where the first pads with <|endoftext|>.
SDXL_PAD_TOKEN = "!"


def _write_tokenizer_files(folder: Path) -> None:
    """Write a CLIP-style vocab.json + merges.txt: bytes, bytes</w>, merges, specials."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + ["".join(pair) for pair in BPE_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = ["#version: 0.2"] + [" ".join(pair) for pair in BPE_MERGES]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def build_tiny_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """The tiny BPE tokenizer; ``pad_token`` overrides CLIP's <|endoftext|> padding (SDXL's second uses "!")."""
    extra = {"pad_token": pad_token} if pad_token else {}
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_TOKENS, local_files_only=True, **extra)


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


def _build_sdxl_unet() -> UNet2DConditionModel:
    """SDXL's layout (no attention at the top level, 2 resnets per level, deeper attention below) in miniature."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        # diffusers' legacy name: these are head counts, as SDXL's (5, 10, 20) are; 8 channels per head.
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=TEXT_HIDDEN_SIZE + TEXT2_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=SDXL_TIME_IDS * SDXL_TIME_EMBED_DIM + TEXT2_PROJECTION_DIM,
        norm_num_groups=8,
    )


def _build_vae(scaling_factor: float = 0.18215) -> AutoencoderKL:
    return sd_vae((8, 16, 16, 16), norm_num_groups=8, scaling_factor=scaling_factor)


def _text_config(tokenizer: CLIPTokenizer, hidden_size: int, intermediate_size: int, **extra) -> CLIPTextConfig:
    return clip_text_config(tokenizer, hidden_size, intermediate_size, MAX_TOKENS, **extra)


def _build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN_SIZE, 64))


def _build_text_encoder_2(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    """SDXL's second encoder: OpenCLIP-style (gelu) with a projection that gives the pooled embedding."""
    config = _text_config(tokenizer, TEXT2_HIDDEN_SIZE, 96, projection_dim=TEXT2_PROJECTION_DIM, hidden_act="gelu")
    return CLIPTextModelWithProjection(config)


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


def make_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The tiny SDXL pipeline in memory; same seed -> same weights.

    Both tokenizers share the tiny vocabulary; the second pads with "!" as SDXL's does.
    """
    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_tokenizer(pad_token=SDXL_PAD_TOKEN)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _build_sdxl_unet()
        vae = _build_vae(scaling_factor=SDXL_VAE_SCALING)
        text_encoder = _build_text_encoder(tokenizer)
        text_encoder_2 = _build_text_encoder_2(tokenizer_2)
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet.eval(),
        # from_config keeps keys Euler does not take (clip_sample) in the saved config.
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        add_watermarker=False,
    )


def _save_once(path: str | os.PathLike, architecture: str, make_pipeline: Callable[[], DiffusionPipeline]) -> Path:
    """Save ``make_pipeline()`` at ``path`` unless a valid model of ``architecture`` is already there."""
    target = Path(path)
    if target.exists():
        if not target.is_dir() or diffusers_folder_problems(target):
            # Never overwrite what is there: it may be the user's own files.
            raise ModelLoadError(
                f"model.path: {target} exists but is not a valid model; delete it or choose another path"
            )
        found = folder_architecture(target)
        if found != architecture:
            raise ModelLoadError(
                f"model.path: {target} already holds an {found!r} model, not the tiny {architecture!r} one; "
                "delete it or choose another path"
            )
        return target
    pipeline = make_pipeline()
    with atomic_dir(target) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    return target


def build_tiny_sd15(path: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Save the tiny pipeline at ``path`` (diffusers layout, safetensors) unless a model is already there."""
    return _save_once(path, "sd", lambda: make_tiny_pipeline(seed=seed, prediction_type=prediction_type))


def build_tiny_sdxl(path: str | os.PathLike, seed: int = 0) -> Path:
    """Save the tiny SDXL pipeline at ``path`` (diffusers layout, safetensors) unless one is already there."""
    return _save_once(path, "sdxl", lambda: make_tiny_sdxl_pipeline(seed=seed))


def build_tiny_sd15_vpred(path: str | os.PathLike, seed: int = 0) -> Path:
    """The tiny model with a v-prediction scheduler, like SD 2.x 768-v."""
    return build_tiny_sd15(path, seed=seed, prediction_type="v_prediction")
