"""Deterministic validation loss: the cheap, stable early signal for pruning.

Each held-out image is noised at the same fixed timesteps with the same noise
(one CPU generator per image, seeded from (seed, image index)), so two
evaluations differ only because the network changed. Nothing here touches a
global RNG, so training after a validation pass is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from train.loss import Predict, per_sample_loss


def fixed_noise(shape: torch.Size, seed: int, index: int, count: int) -> torch.Tensor:
    """``count`` noise maps for image ``index``, the same every call."""
    generator = torch.Generator("cpu").manual_seed(seed * 1_000_003 + index)
    return torch.randn((count, *shape), generator=generator)


@torch.no_grad()
def validation_loss(
    predict: Predict,
    latents: Sequence[torch.Tensor],
    conditions: Sequence,
    scheduler,
    timesteps: Sequence[int],
    seed: int,
    prediction_type: str,
) -> float:
    """Mean MSE over held-out images x fixed timesteps; ``predict(noisy, t, condition)`` runs the model.

    Each image's condition is whatever ``predict`` takes, with ``expand(n)`` giving n copies
    (``train.models.conditioning.UNetConditioning``).
    """
    t = torch.tensor(list(timesteps), dtype=torch.long)
    losses = []
    for index, (latent, condition) in enumerate(zip(latents, conditions, strict=True)):
        clean = latent.unsqueeze(0).expand(len(t), *latent.shape)
        noise = fixed_noise(latent.shape, seed, index, len(t))
        context = condition.expand(len(t))
        losses.append(per_sample_loss(predict, scheduler, clean, context, noise, t, prediction_type).mean().cpu())
    return float(torch.stack(losses).mean()) if losses else float("nan")
