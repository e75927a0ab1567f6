"""The diffusion training loss, as pure functions: noise the latents, predict, compare.

Shared by the training step and the deterministic validation loss, so both
judge the model by the same target (noise for epsilon models, velocity for
v-prediction) and the same per-sample weighting.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from train.noise import min_snr_weights

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def prediction_target(scheduler, latents, noise, timesteps, prediction_type: str) -> torch.Tensor:
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def per_sample_loss(
    predict: Predict,
    scheduler,
    latents: torch.Tensor,
    hidden: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str,
    min_snr_gamma: float | None = None,
    input_perturbation: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE per sample (B,), min-SNR weighted when gamma is set; ``predict(noisy, t, hidden)`` runs the model.

    ``input_perturbation`` (``NoiseSampler.input_perturbation``) is added to the noise of the noisy input only;
    the target (noise, or the velocity of the plain noise) stays unperturbed, as in kohya's ip_noise_gamma.
    """
    input_noise = noise if input_perturbation is None else noise + input_perturbation.to(noise.device, noise.dtype)
    noisy = scheduler.add_noise(latents, input_noise, timesteps)
    target = prediction_target(scheduler, latents, noise, timesteps, prediction_type)
    pred = predict(noisy, timesteps, hidden)
    loss = F.mse_loss(pred.float(), target.to(pred.device).float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        weights = min_snr_weights(timesteps, scheduler.alphas_cumprod, min_snr_gamma, prediction_type)
        loss = loss * weights.to(loss.device)
    return loss
