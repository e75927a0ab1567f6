"""Training the judge on the generator's labels alone: fresh scenes every step, nothing else.

Renders from a diffusion model are softer than the generator's crisp images,
so the training images are lightly blurred and noised at random; the labels
stay the generator's. Nothing here reads CLIP, the aesthetic head, the base
model or any score: the judge owes nothing to what it judges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluate.judge import BACKGROUND_LABELS, COLOUR_LABELS, SHAPE_LABELS, Judge, JudgeNet
from evaluate.world_degrade import gaussian_blur
from train.data import world
from train.models.fitting import Fitting, Progress


def soften(x: Tensor, generator: torch.Generator) -> Tensor:
    """Per image, at random: a blur (sigma up to 1.2 px) and pixel noise (up to 0.04), as renders have."""
    out = []
    for image in x:
        image = image.unsqueeze(0)
        if torch.rand(1, generator=generator) < 0.5:
            image = gaussian_blur(image, 0.3 + 0.9 * float(torch.rand(1, generator=generator)))
        if torch.rand(1, generator=generator) < 0.5:
            sigma = 0.04 * float(torch.rand(1, generator=generator))
            image = image + sigma * torch.randn(image.shape, generator=generator)
        out.append(image.clamp(0, 1))
    return torch.cat(out)


def _labels(scenes: list[world.Scene]) -> tuple[Tensor, Tensor, Tensor]:
    shape = torch.tensor([SHAPE_LABELS.index(s.shape) for s in scenes])
    # An empty background has no shape colour: -100 is cross-entropy's "ignore".
    colour = torch.tensor([COLOUR_LABELS.index(s.colour) if s.shape != "none" else -100 for s in scenes])
    background = torch.tensor([BACKGROUND_LABELS.index(s.background) for s in scenes])
    return shape, colour, background


def train_judge(*, steps: int, batch_size: int, lr: float, seed: int, width: int = 32,
                progress: Progress | None = None) -> Judge:
    """A judge trained on ``steps`` batches of fresh scenes of every shape, blob and empty background."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = JudgeNet(width)
    scenes = world.scenes(seed, shapes=world.SHAPES + world.DISTRACTORS)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    fitting = Fitting("judge", optimizer, schedule, steps, progress=progress)
    for step in range(steps):
        batch = [next(scenes) for _ in range(batch_size)]
        x = soften(torch.from_numpy(world.to_array([world.render(s) for s in batch])), generator)
        targets = _labels(batch)
        fitting.step(step, sum(F.cross_entropy(logits, target) for logits, target in zip(net(x), targets, strict=True)))
    return Judge(net.eval())
