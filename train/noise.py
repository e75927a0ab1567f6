"""Training noise: kohya's noise offset, multires (pyramid) noise, Perlin noise, input perturbation, min-SNR weights.

Every random draw comes from the ``generator`` passed in, never from the
global RNG, so one seed gives the same noise on every run. Draws happen on the
generator's device and move to the latents' device, so a CPU generator gives
the same noise whether the latents are on CPU or GPU. The math lives in pure
functions; ``NoiseSampler`` only holds the config.
"""

from __future__ import annotations

import math

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


def _fade(t: Tensor) -> Tensor:
    # 6t^5 - 15t^4 + 10t^3: zero first and second derivatives at the lattice, so octaves join without creases.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _lattice_coords(size: int, cells: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cell index and in-cell fraction of each pixel centre, for ``cells`` cells across ``size`` pixels."""
    pos = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (cells / size)
    index = pos.floor().long().clamp(max=cells - 1)
    return index, pos - index


def _perlin_octave(shape: tuple[int, ...], cells: tuple[int, int], generator: torch.Generator, like: Tensor) -> Tensor:
    """One octave of 2-D gradient noise per (sample, channel): a lattice of cells[0] x cells[1] cells."""
    batch, channels, height, width = shape
    angles = 2.0 * math.pi * _rand((batch, channels, cells[0] + 1, cells[1] + 1), generator, like)
    grad_x, grad_y = angles.cos(), angles.sin()
    iy, fy = _lattice_coords(height, cells[0], like.device)
    ix, fx = _lattice_coords(width, cells[1], like.device)
    fy, fx = fy.view(height, 1), fx.view(1, width)

    def corner(dy: int, dx: int) -> Tensor:
        # Dot product of the corner's gradient with the pixel's offset from that corner.
        rows, cols = (iy + dy).view(height, 1), (ix + dx).view(1, width)
        return grad_x[:, :, rows, cols] * (fx - dx) + grad_y[:, :, rows, cols] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), u)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), u)
    return torch.lerp(top, bottom, v)


def _standardise(x: Tensor, center: bool) -> Tensor:
    if center:
        x = x - x.mean(dim=(2, 3), keepdim=True)
    return x / x.std(dim=(2, 3), keepdim=True, correction=0)


def perlin_noise_like(
    latents: Tensor, generator: torch.Generator, octaves: int, persistence: float, perturbation: float
) -> Tensor:
    """Fractal Perlin noise shaped like the latents: smooth, low-frequency heavy, unit std per (sample, channel).

    Octave i = 0..octaves-1 is gradient noise on a lattice of min(2^i, H) x
    min(2^i, W) cells (a cell is never under one pixel), sampled at pixel
    centres with the 6t^5-15t^4+10t^3 fade, weighted persistence^i. Higher
    persistence gives the fine octaves more weight (rougher noise). The sum is
    shifted and scaled to mean 0, std 1 per (sample, channel) map, so the
    schedule's noise level stays right. Perturbation p mixes in white noise,
    sqrt(1-p^2) x perlin + p x N(0,1), rescaled to std 1 per map: this breaks
    Perlin's lattice structure while keeping part of its low frequencies.
    Draw order: per octave, U(0,1) angles of shape (B, C, cells_h+1, cells_w+1);
    then, if p > 0, one (B, C, H, W) normal tensor. Returns float32 on the
    latents' device (the caller casts).
    """
    batch, channels, height, width = latents.shape
    if height * width < 2:
        raise ValueError(f"perlin noise needs at least 2 pixels per map, got {height}x{width}")
    like = torch.empty(0, device=latents.device, dtype=torch.float32)
    total = torch.zeros((batch, channels, height, width), device=latents.device)
    for octave in range(octaves):
        cells = (min(2**octave, height), min(2**octave, width))
        total = total + _perlin_octave(latents.shape, cells, generator, like) * persistence**octave
    noise = _standardise(total, center=True)
    if perturbation > 0:
        white = _randn(tuple(latents.shape), generator, like)
        noise = _standardise(math.sqrt(1.0 - perturbation**2) * noise + perturbation * white, center=False)
    return noise


def input_perturbation_noise(
    latents: Tensor, generator: torch.Generator, gamma: float, random_strength: bool
) -> Tensor | None:
    """kohya's ip_noise_gamma term: strength x N(0,1), added to the noise for the noisy input only.

    strength = gamma, or gamma x one U(0,1) scalar for the whole batch with
    ``random_strength`` (kohya draws torch.rand(1)). The training target keeps
    the plain noise, so the model learns to undo a slightly wrong input (input
    perturbation against exposure bias). Draw order: the uniform if random, then
    the (B, C, H, W) normals. None when gamma is 0.
    """
    if gamma == 0:
        return None
    like = torch.empty(0, device=latents.device, dtype=torch.float32)
    strength = gamma * _rand((1,), generator, like) if random_strength else torch.tensor(float(gamma))
    return (strength.to(latents.device) * _randn(tuple(latents.shape), generator, like)).to(latents.dtype)


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
    """Training noise shaped like the latents: N(0,1) or Perlin, then offset, then multires; plus ip noise."""

    def __init__(
        self,
        offset: float = 0.0,
        offset_random_strength: bool = False,
        adaptive_offset: float = 0.0,
        multires_iterations: int = 0,
        multires_discount: float = 0.3,
        perlin_octaves: int = 0,
        perlin_persistence: float = 0.5,
        perlin_perturbation: float = 0.0,
        ip_noise_gamma: float = 0.0,
        ip_noise_gamma_random_strength: bool = False,
    ):
        _number("offset", offset, 0.0)
        _number("multires_iterations", multires_iterations, 0, integer=True)
        _number("multires_discount", multires_discount, 0.0)
        _number("perlin_octaves", perlin_octaves, 0, integer=True)
        _number("perlin_persistence", perlin_persistence, 0.0)
        _number("perlin_perturbation", perlin_perturbation, 0.0)
        _number("ip_noise_gamma", ip_noise_gamma, 0.0)
        for key, flag in (
            ("offset_random_strength", offset_random_strength),
            ("ip_noise_gamma_random_strength", ip_noise_gamma_random_strength),
        ):
            if not isinstance(flag, bool):
                raise ConfigError(f"noise.sampler.{key}: must be true or false, got {flag!r}")
        if isinstance(adaptive_offset, bool) or not isinstance(adaptive_offset, (int, float)):
            raise ConfigError(f"noise.sampler.adaptive_offset: must be a number, got {adaptive_offset!r}")
        if adaptive_offset and not offset:
            # kohya refuses adaptive_noise_scale without noise_offset; so do we.
            raise ConfigError("noise.sampler.adaptive_offset: needs noise.sampler.offset > 0")
        for key, value in (
            ("multires_discount", multires_discount),
            ("perlin_persistence", perlin_persistence),
            ("perlin_perturbation", perlin_perturbation),
        ):
            if value > 1:
                raise ConfigError(f"noise.sampler.{key}: must be in [0, 1], got {value}")
        if perlin_octaves and multires_iterations:
            # Both reshape the noise spectrum towards low frequencies; stacking them has no clear meaning.
            raise ConfigError(
                "noise.sampler.perlin_octaves: Perlin and multires noise both reshape the spectrum; "
                "set noise.sampler.multires_iterations to 0 or perlin_octaves to 0"
            )
        self.offset = float(offset)
        self.offset_random_strength = offset_random_strength
        self.adaptive_offset = float(adaptive_offset)
        self.multires_iterations = int(multires_iterations)
        self.multires_discount = float(multires_discount)
        self.perlin_octaves = int(perlin_octaves)
        self.perlin_persistence = float(perlin_persistence)
        self.perlin_perturbation = float(perlin_perturbation)
        self.ip_noise_gamma = float(ip_noise_gamma)
        self.ip_noise_gamma_random_strength = ip_noise_gamma_random_strength

    def __call__(self, latents: Tensor, generator: torch.Generator) -> Tensor:
        # Drawn in float32 so the values do not depend on the latents' dtype.
        if self.perlin_octaves:
            noise = perlin_noise_like(
                latents, generator, self.perlin_octaves, self.perlin_persistence, self.perlin_perturbation
            )
        else:
            noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents.device)
        noise = apply_noise_offset(
            noise, latents, self.offset, self.offset_random_strength, self.adaptive_offset, generator
        )
        noise = pyramid_noise_like(noise, generator, self.multires_iterations, self.multires_discount)
        return noise.to(latents.dtype)

    def input_perturbation(self, latents: Tensor, generator: torch.Generator) -> Tensor | None:
        """The ip_noise_gamma term for ``per_sample_loss``; draw it after the noise (and timesteps, as kohya)."""
        return input_perturbation_noise(latents, generator, self.ip_noise_gamma, self.ip_noise_gamma_random_strength)

    def metadata(self) -> dict[str, str]:
        """kohya's ss_* noise keys, written as str(args.x) so "None" when a feature is off."""

        def value_or_none(value: float | int) -> str:
            return str(value) if value else "None"

        def perlin(value: float) -> str:
            return str(value) if self.perlin_octaves else "None"

        return {
            "ss_noise_offset": value_or_none(self.offset),
            "ss_noise_offset_random_strength": str(self.offset_random_strength),
            "ss_adaptive_noise_scale": value_or_none(self.adaptive_offset),
            "ss_multires_noise_iterations": value_or_none(self.multires_iterations),
            "ss_multires_noise_discount": str(self.multires_discount),
            "ss_perlin_octaves": value_or_none(self.perlin_octaves),
            "ss_perlin_persistence": perlin(self.perlin_persistence),
            "ss_perlin_perturbation": perlin(self.perlin_perturbation),
            "ss_ip_noise_gamma": value_or_none(self.ip_noise_gamma),
            "ss_ip_noise_gamma_random_strength": str(self.ip_noise_gamma_random_strength),
        }

    def __repr__(self) -> str:
        return (
            f"NoiseSampler(offset={self.offset}, offset_random_strength={self.offset_random_strength}, "
            f"adaptive_offset={self.adaptive_offset}, multires_iterations={self.multires_iterations}, "
            f"multires_discount={self.multires_discount}, perlin_octaves={self.perlin_octaves}, "
            f"perlin_persistence={self.perlin_persistence}, perlin_perturbation={self.perlin_perturbation}, "
            f"ip_noise_gamma={self.ip_noise_gamma}, "
            f"ip_noise_gamma_random_strength={self.ip_noise_gamma_random_strength})"
        )


def build_noise_sampler(cfg) -> NoiseSampler:
    """The sampler of a NoiseConfig (``noise.sampler._target_``); bad values -> ConfigError naming the key."""
    from train.optimizers import instantiate_factory

    shipped = ["none", "offset", "multires", "offset_multires", "perlin", "perlin_offset"]
    return instantiate_factory(cfg.sampler, "noise", shipped, field="sampler")()
