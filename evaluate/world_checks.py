"""Checks of the world's models by the judge: does the base model draw what it is asked, and not the concept?

Renders go through the code a user's model takes: ``load_base_model`` on the
folder, then the evaluator's ``Renderer`` with an ``EvaluateConfig``'s
sampler, steps and guidance. The bench (bench/world_validity.py), the build
and the tests share these.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import torch

from evaluate.config import EvaluateConfig
from evaluate.judge import Judge, label_shares, verdict_scores
from evaluate.prompts import PromptSpec
from evaluate.render import Renderer, plan_renders
from train.data import world


def seen_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct captions of seen shapes (every shape, colour and background combination, shuffled)."""
    combos = list(itertools.product(world.SEEN_SHAPES, world.COLOURS, world.BACKGROUNDS))
    random.Random(seed).shuffle(combos)
    return [f"a {c} {s} on a {b} background" for s, c, b in combos[:count]]


def concept_prompts() -> list[str]:
    """The concept token in every colour on every background, and with no colour named."""
    token = world.CONCEPT_TOKEN
    return [f"a {token} on a {b} background" for b in world.BACKGROUNDS] + [
        f"a {c} {token} on a {b} background" for c in world.COLOURS for b in world.BACKGROUNDS
    ]


@dataclass
class Rendered:
    prompts: list[str]
    images: list


def render(model, cfg: EvaluateConfig, prompts: list[str], seeds: list[int], device: str = "cpu") -> Rendered:
    """Every prompt at every seed with the LoRA-free model, at ``cfg``'s sampler, steps and guidance."""
    renderer = Renderer.for_model(model, device=torch.device(device), cfg=cfg, default_size=(world.SIZE, world.SIZE))
    jobs = plan_renders([PromptSpec(p) for p in prompts], seeds, [], baseline=True)
    renders = renderer.render(jobs)
    return Rendered([r.job.prompt.prompt for r in renders], [r.image for r in renders])


def label_accuracy(judge: Judge, rendered: Rendered) -> dict[str, float]:
    """The share of renders whose shape, colour and background the judge reads as the prompt asked."""
    return label_shares(judge(rendered.images), [world.read_prompt(p) for p in rendered.prompts])


def concept_scores(judge: Judge, rendered: Rendered) -> dict[str, float]:
    return verdict_scores(judge(rendered.images), [world.read_prompt(p) for p in rendered.prompts])


@torch.no_grad()
def round_trip_accuracy(vae, judge: Judge, count: int, seed: int) -> dict[str, float]:
    """The judge on fresh images after the VAE's encode and decode: does it read the decoder's output?"""
    scenes = list(world.scenes(seed, count, shapes=world.SHAPES))
    x = torch.from_numpy(world.to_array([world.render(s) for s in scenes])) * 2 - 1
    decoded = vae.decode(vae.encode(x.to(vae.dtype)).latent_dist.mode()).sample.float()
    return label_shares(judge(_to_images((decoded.clamp(-1, 1) + 1) / 2)), scenes)


def warped_accuracy(judge: Judge, count: int, seed: int, amplitude_px: float) -> dict[str, float]:
    """The judge on fresh images bent by a smooth random warp of about ``amplitude_px`` pixels: a
    model's renders are never the generator's exact polygons (puffy, round-pointed stars), and this
    says how far from them the judge's verdicts still hold. ``star``: the share of stars read as stars."""
    import torch.nn.functional as F

    scenes = list(world.scenes(seed, count, shapes=world.SHAPES))
    x = torch.from_numpy(world.to_array([world.render(s) for s in scenes]))
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    # A 4x4 field of random offsets, smoothly upsampled: a bend of the whole shape, not pixel noise.
    field = F.interpolate(torch.randn(n, 2, 4, 4, generator=g), size=(h, w), mode="bicubic", align_corners=True)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], -1).unsqueeze(0) + field.permute(0, 2, 3, 1) * (2 * amplitude_px / w)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    verdicts = judge(_to_images(warped))
    stars = [v.shape == s.shape for v, s in zip(verdicts, scenes, strict=True) if s.shape == world.CONCEPT_SHAPE]
    return {**label_shares(verdicts, scenes), "star": float(np.mean(stars))}


def star_calibration(judge: Judge, inners: tuple[float, ...], count: int, seed: int) -> dict[float, dict[str, float]]:
    """Where "star" ends for the judge: fresh star scenes drawn with their inner corners at each of ``inners``
    (the generator's stars: ``world.STAR_INNER``; 1.0 is a decagon, nearly a circle), and the share of each
    verdict. A model's stars are fatter or rounder than the generator's; this says which of them count."""
    scenes = list(world.scenes(seed, count, shapes=(world.CONCEPT_SHAPE,)))
    shares = {}
    for inner in inners:
        verdicts = judge([world.render(s, outline=world.star_outline(inner)) for s in scenes])
        shapes = [v.shape for v in verdicts]
        shares[inner] = {shape: shapes.count(shape) / len(shapes) for shape in sorted(set(shapes))}
    return shares


def _to_images(x: torch.Tensor) -> list:
    """Images in [0, 1], (N, 3, H, W), as the PIL images a render gives."""
    from PIL import Image

    pixels = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]
