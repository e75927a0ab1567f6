"""What spoils a render, as pure functions of an image batch in [0, 1] and a severity in [0, 1].

Blur, noise and colour bleeding, and what an over-trained LoRA does to a
render: burnt colours, a colour cast, blocky or speckled texture. The world's
CLIP learns a word for each (as real CLIP learns "blurry" from captions), and
the aesthetic head learns to score them below clean images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from train.data import world

CLEAN_SCORE, WORST_SCORE = 6.5, 2.0


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """A separable Gaussian blur of an (N, C, H, W) batch, edges replicated."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def blur(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    return gaussian_blur(x, 0.6 + 2.4 * s)


def noise(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    return x + (0.03 + 0.22 * s) * torch.randn(x.shape, generator=g)


def colour_bleed(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    """Colours run past their edges: the image mixed with a wide blur of itself, and chroma smeared."""
    smeared = gaussian_blur(x, 4.0)
    return torch.lerp(x, smeared, 0.35 + 0.6 * s)


def burn(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    """Over-trained LoRA: contrast and saturation pushed until colours clip."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    grey = x.mean(dim=1, keepdim=True)
    saturated = grey + (x - grey) * (1.5 + 2.5 * s)
    return mean + (saturated - mean) * (1.3 + 1.7 * s)


def colour_cast(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    """Everything drifts toward one tint (renders turning monochrome)."""
    tint = torch.rand(1, 3, 1, 1, generator=g)
    luminance = x.mean(dim=1, keepdim=True)
    return torch.lerp(x, luminance * tint * 1.6, 0.3 + 0.6 * s)


def blocky(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    side = max(4, int(world.SIZE / (2 + 8 * s)))
    return F.interpolate(F.interpolate(x, size=(side, side), mode="area"), size=x.shape[-2:], mode="nearest")


def speckle(x: Tensor, s: float, g: torch.Generator) -> Tensor:
    """High-frequency texture over everything: a grid of bright and dark dots."""
    pattern = torch.rand((1, 1, 16, 16), generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2)
    checker = ((torch.arange(world.SIZE).view(-1, 1) + torch.arange(world.SIZE).view(1, -1)) % 2).float()
    return x + (0.08 + 0.3 * s) * (checker * 2 - 1) * pattern


# Each degradation and the word a caption uses for it.
DEGRADATIONS = {
    "blurry": blur,
    "noisy": noise,
    "smeared": colour_bleed,
    "oversaturated": burn,
    "tinted": colour_cast,
    "pixelated": blocky,
    "speckled": speckle,
}
WORDS = tuple(DEGRADATIONS)


def degrade(x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each image spoilt by one or two random degradations; the target scores, lower for worse."""
    out, targets = [], []
    for image in x:
        image = image.unsqueeze(0)
        total = 0.0
        for _ in range(1 + int(torch.rand(1, generator=g) < 0.3)):
            severity = float(torch.rand(1, generator=g))
            kind = DEGRADATIONS[WORDS[int(torch.randint(len(WORDS), (1,), generator=g))]]
            image = kind(image, severity, g).clamp(0, 1)
            total += 0.35 + 0.65 * severity
        out.append(image)
        targets.append(CLEAN_SCORE - (CLEAN_SCORE - WORST_SCORE) * min(1.0, total))
    return torch.cat(out), torch.tensor(targets)
