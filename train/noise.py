"""Training noise: kohya's noise offset and multires (pyramid) noise, and min-SNR weights.

Every random draw comes from the ``generator`` passed in, never from the
global RNG, so one seed gives the same noise on every run. Draws happen on the
generator's device and move to the latents' device, so a CPU generator gives
the same noise whether the latents are on CPU or GPU. The math lives in pure functions; ``NoiseSampler`` only holds the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from train.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    # Drawn on the generator's device, then moved: a CPU generator gives the same noise on any device.
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def apply_noise_offset(
    noise: Tensor,
    latents: Tensor,
    offset: float,
    random_strength: bool,
    adaptive_scale: float,
    generator: torch.Generator,
) -> Tensor:
    """Add one N(0,1) x strength value per (sample, channel) to the whole noise map.

    strength = offset, or offset x U(0,1) per sample with ``random_strength``,
    plus ``adaptive_scale`` x |spatial mean of the latent| per (sample, channel),
    clamped at 0 (kohya). Draw order: the U(0,1) strengths (B,) if random, then
    the (B, C, 1, 1) normals.
    """
    if offset == 0:
        return noise
    batch, channels = latents.shape[:2]
    strength = torch.full((batch, 1, 1, 1), float(offset), device=noise.device, dtype=noise.dtype)
    if random_strength:
        uniform = _rand((batch,), generator, noise)
        strength = strength * uniform.view(batch, 1, 1, 1)
    if adaptive_scale:
        latent_mean = latents.to(noise.dtype).mean(dim=(2, 3), keepdim=True).abs()
        strength = (strength + adaptive_scale * latent_mean).clamp(min=0.0)
    shift = _randn((batch, channels, 1, 1), generator, noise)
    return noise + strength * shift


def pyramid_noise_like(noise: Tensor, generator: torch.Generator, iterations: int, discount: float) -> Tensor:
    """Multires noise: add upsampled low-resolution noise, then rescale to unit std.

    For i = 1..iterations: r ~ U(2,4), draw N(0,1) at (H/r^i, W/r^i) (int, at
    least 1), upsample bilinearly to (H, W), add with weight discount^i; stop
    after the first level with a side of 1. The sum is divided by its std over
    the whole batch (kohya). Draw order: ``iterations`` uniforms for r, then one
    normal tensor per level. ``iterations == 0`` returns the input unchanged.
    """
    if iterations <= 0:
        return noise
    batch, channels, height, width = noise.shape
    ratios = (2.0 + 2.0 * torch.rand((iterations,), generator=generator, device=generator.device)).tolist()
    total = noise
    for level, ratio in enumerate(ratios, start=1):
        low_h = max(1, int(height / ratio**level))
        low_w = max(1, int(width / ratio**level))
        low = _randn((batch, channels, low_h, low_w), generator, noise)
        upsampled = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
        total = total + upsampled * discount**level
        if low_h == 1 or low_w == 1:
            break
    return total / total.std()


def min_snr_weights(timesteps: Tensor, alphas_cumprod: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Per-sample min-SNR loss weights: min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"model.prediction_type: must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if not gamma > 0:
        raise ConfigError(f"train.min_snr_gamma: must be > 0, got {gamma}")
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    # SNR 0 (zero-terminal-SNR schedules) would give 0/0; the limit of min(SNR, gamma)/SNR there is 1.
    return torch.where(snr > 0, clipped / snr, torch.ones_like(snr))


def _number(key: str, value: object, minimum: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        wanted = "an integer" if integer else "a number"
        raise ConfigError(f"noise.sampler.{key}: must be {wanted} >= {minimum}, got {value!r}")


class NoiseSampler:
    """Draws training noise shaped like the latents: N(0,1), then offset, then multires."""

    def __init__(
        self,
        offset: float = 0.0,
        offset_random_strength: bool = False,
        adaptive_offset: float = 0.0,
        multires_iterations: int = 0,
        multires_discount: float = 0.3,
    ):
        _number("offset", offset, 0.0)
        _number("multires_iterations", multires_iterations, 0, integer=True)
        _number("multires_discount", multires_discount, 0.0)
        if not isinstance(offset_random_strength, bool):
            raise ConfigError(
                f"noise.sampler.offset_random_strength: must be true or false, got {offset_random_strength!r}"
            )
        if isinstance(adaptive_offset, bool) or not isinstance(adaptive_offset, (int, float)):
            raise ConfigError(f"noise.sampler.adaptive_offset: must be a number, got {adaptive_offset!r}")
        if adaptive_offset and not offset:
            # kohya refuses adaptive_noise_scale without noise_offset; so do we.
            raise ConfigError("noise.sampler.adaptive_offset: needs noise.sampler.offset > 0")
        if multires_discount > 1:
            raise ConfigError(f"noise.sampler.multires_discount: must be in [0, 1], got {multires_discount}")
        self.offset = float(offset)
        self.offset_random_strength = offset_random_strength
        self.adaptive_offset = float(adaptive_offset)
        self.multires_iterations = int(multires_iterations)
        self.multires_discount = float(multires_discount)

    def __call__(self, latents: Tensor, generator: torch.Generator) -> Tensor:
        # Drawn in float32 so the values do not depend on the latents' dtype.
        noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents.device)
        noise = apply_noise_offset(
            noise, latents, self.offset, self.offset_random_strength, self.adaptive_offset, generator
        )
        noise = pyramid_noise_like(noise, generator, self.multires_iterations, self.multires_discount)
        return noise.to(latents.dtype)

    def metadata(self) -> dict[str, str]:
        """kohya's ss_* noise keys, written as str(args.x) so "None" when a feature is off."""

        def value_or_none(value: float | int) -> str:
            return str(value) if value else "None"

        return {
            "ss_noise_offset": value_or_none(self.offset),
            "ss_noise_offset_random_strength": str(self.offset_random_strength),
            "ss_adaptive_noise_scale": value_or_none(self.adaptive_offset),
            "ss_multires_noise_iterations": value_or_none(self.multires_iterations),
            "ss_multires_noise_discount": str(self.multires_discount),
        }

    def __repr__(self) -> str:
        return (
            f"NoiseSampler(offset={self.offset}, offset_random_strength={self.offset_random_strength}, "
            f"adaptive_offset={self.adaptive_offset}, multires_iterations={self.multires_iterations}, "
            f"multires_discount={self.multires_discount})"
        )


def build_noise_sampler(cfg) -> NoiseSampler:
    """The sampler of a NoiseConfig (``noise.sampler._target_``); bad values -> ConfigError naming the key."""
    from train.optimizers import instantiate_factory

    return instantiate_factory(cfg.sampler, "noise", ["none", "offset", "multires", "offset_multires"])()
