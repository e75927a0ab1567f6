"""Pretraining the world's base model: the VAE, then the U-Net and text encoder on the VAE's latents.

Plain PyTorch loops over the world's generator (train/data/world.py), seeded,
single-process, on the CPU: the same seed and thread count give the same
weights. The held-out concept (the star) is never shown to the U-Net or the
text encoder. The VAE is a generic image codec, as SD's is: it sees every
shape of the world, the star included, so that a LoRA that learns the star
can be decoded; knowing what a star is lives in the U-Net.
"""

from __future__ import annotations

import copy
import logging
import math
import random

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from train.data import world
from train.models.fitting import Fitting, Progress

log = logging.getLogger(__name__)


def _images(scenes) -> torch.Tensor:
    """Rendered scenes as a batch in [-1, 1], the VAE's range."""
    return torch.from_numpy(world.to_array([world.render(s) for s in scenes])) * 2 - 1


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _edge_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the images' finite differences: keeps the shapes' edges sharp where pixel losses blur them."""
    dx = (y.diff(dim=-1) - x.diff(dim=-1)).abs().mean()
    dy = (y.diff(dim=-2) - x.diff(dim=-2)).abs().mean()
    return dx + dy


def train_vae(
    vae: AutoencoderKL, *, steps: int, batch_size: int, lr: float, seed: int, progress: Progress | None = None
) -> AutoencoderKL:
    """Reconstruction (L1 + L2) with a light KL term; every shape of the world, endless fresh scenes."""
    torch.manual_seed(seed)
    scenes = world.scenes(seed, shapes=world.SHAPES)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, steps, steps // 20))
    vae.train()
    fitting = Fitting("vae", optimizer, schedule, steps, clip_params=vae.parameters(), progress=progress)
    for step in range(steps):
        x = _images([next(scenes) for _ in range(batch_size)])
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        reconstruction = (y - x).abs().mean() + (y - x).pow(2).mean() + _edge_loss(y, x)
        kl = posterior.kl().mean() / x[0].numel()
        fitting.step(step, reconstruction + 1e-4 * kl, shown=reconstruction)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, seed: int, count: int = 512) -> float:
    """1 / std of the latents, as SD's 0.18215 was set: the U-Net then sees unit-variance latents."""
    x = _images(world.scenes(seed, count, shapes=world.SEEN_SHAPES))
    return float(1.0 / vae.encode(x).latent_dist.mode().std())


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, tokenizer: CLIPTokenizer, seed: int, count: int, chunk: int = 256):
    """A pool of seen-shape scenes: latent means and stds (sampled each step), and their captions' token ids."""
    scenes = list(world.scenes(seed, count, shapes=world.SEEN_SHAPES))
    words = random.Random(seed)
    captions = [world.describe(s, words) for s in scenes]
    means, stds = [], []
    for start in range(0, count, chunk):
        posterior = vae.encode(_images(scenes[start : start + chunk])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return torch.cat(means), torch.cat(stds), ids


def train_base(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    vae: AutoencoderKL,
    scheduler: DDPMScheduler,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pool_size: int,
    caption_dropout: float = 0.1,
    min_snr_gamma: float = 5.0,
    ema_decay: float = 0.999,
    progress: Progress | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Epsilon-prediction training of U-Net and text encoder together; returns their EMA weights.

    Captions are dropped (the empty prompt) at ``caption_dropout`` so classifier-free guidance works;
    min-SNR weighting (gamma 5) speeds training up, as it does for SD.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    means, stds, ids = encode_pool(vae, tokenizer, seed, pool_size)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    scale = vae.config.scaling_factor
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, steps, steps // 20))
    ema = [copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)]
    unet.train()
    text_encoder.train()
    fitting = Fitting("base", optimizer, schedule, steps, clip_params=params, progress=progress)
    for step in range(steps):
        index = torch.randint(0, pool_size, (batch_size,), generator=generator)
        latents = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scale
        tokens = ids[index].clone()
        dropped = torch.rand(batch_size, generator=generator) < caption_dropout
        tokens[dropped] = empty
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        states = text_encoder(tokens).last_hidden_state
        prediction = unet(noisy, timesteps, states).sample
        weights = torch.clamp(snr[timesteps], max=min_snr_gamma) / snr[timesteps]
        fitting.step(step, ((prediction - noise).pow(2).mean(dim=(1, 2, 3)) * weights).mean())
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for average, live in zip(ema, (unet, text_encoder), strict=True):
                for a, p in zip(average.parameters(), live.parameters(), strict=True):
                    a.lerp_(p, 1 - decay)
    return ema[0].eval(), ema[1].eval()
