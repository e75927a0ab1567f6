"""Noise offset, multires, Perlin and input-perturbation noise, min-SNR weights: hand and reference computations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from train.config import register_configs
from train.errors import ConfigError
from train.loss import per_sample_loss
from train.noise import (
    NoiseSampler,
    apply_noise_offset,
    input_perturbation_noise,
    min_snr_weights,
    perlin_noise_like,
    pyramid_noise_like,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
SHAPE = (2, 4, 8, 8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def test_offset_is_a_per_channel_constant_of_offset_times_normal_draws():
    latents = torch.zeros(SHAPE)
    noise = NoiseSampler(offset=0.1)(latents, gen(3))
    g = gen(3)
    base = torch.randn(SHAPE, generator=g)
    draws = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    shift = noise - base
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-6)
    assert torch.allclose(shift[..., :1, :1], 0.1 * draws, atol=1e-6)


def test_random_strength_scales_offset_by_uniform_within_zero_and_offset():
    latents = torch.zeros(SHAPE)
    noise = NoiseSampler(offset=0.1, offset_random_strength=True)(latents, gen(5))
    g = gen(5)
    base = torch.randn(SHAPE, generator=g)
    uniform = torch.rand(SHAPE[0], generator=g)
    draws = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    strength = (noise - base)[..., 0, 0] / draws[..., 0, 0]
    # One strength per sample, shared by its channels, within [0, offset].
    assert torch.allclose(strength, strength[:, :1].expand_as(strength), atol=1e-5)
    assert torch.allclose(strength[:, 0], 0.1 * uniform, atol=1e-5)
    assert ((strength >= 0) & (strength <= 0.1 + 1e-6)).all()


def test_adaptive_adds_scale_times_abs_latent_mean_per_channel():
    latents = torch.randn(SHAPE, generator=gen(1)) + torch.tensor([1.0, -2.0, 0.0, 3.0]).view(1, 4, 1, 1)
    shifted = apply_noise_offset(torch.zeros(SHAPE), latents, 0.05, False, 0.5, gen(2))
    draws = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=gen(2))
    expected = (0.05 + 0.5 * latents.mean(dim=(2, 3), keepdim=True).abs()) * draws
    assert torch.allclose(shifted, expected.expand(SHAPE), atol=1e-6)
    # A negative scale can only shrink the strength to 0, never flip it (kohya clamps).
    clamped = apply_noise_offset(torch.zeros(SHAPE), latents * 100, 0.05, False, -1.0, gen(2))
    assert torch.equal(clamped, torch.zeros(SHAPE))


def reference_pyramid(noise, generator, iterations, discount):
    """DOMAIN.md's multires formula, written independently, same draw order as documented."""
    b, c, h, w = noise.shape
    rs = [2 + 2 * u for u in torch.rand(iterations, generator=generator).tolist()]
    out = noise.clone()
    for i in range(1, iterations + 1):
        size = (max(1, int(h / rs[i - 1] ** i)), max(1, int(w / rs[i - 1] ** i)))
        low = torch.randn(b, c, *size, generator=generator)
        out = out + torch.nn.Upsample(size=(h, w), mode="bilinear")(low) * discount**i
        if 1 in size:
            break
    return out / out.std()


def test_multires_matches_reference_and_is_unit_std_with_more_low_frequencies():
    latents = torch.zeros(4, 4, 64, 64)
    noise = NoiseSampler(multires_iterations=6, multires_discount=0.4)(latents, gen(7))
    g = gen(7)
    expected = reference_pyramid(torch.randn(latents.shape, generator=g), g, 6, 0.4)
    assert torch.equal(noise, expected)
    assert torch.allclose(noise.flatten(1).std(dim=1), torch.ones(4), atol=0.1)
    plain = torch.randn(latents.shape, generator=gen(7))
    # Variance of 8x8 block means: 1/64 for white noise, far more with low-frequency content.
    assert F.avg_pool2d(noise, 8).var() > 3 * F.avg_pool2d(plain, 8).var()


def test_same_seed_same_noise_different_seed_different_and_zero_iterations_is_identity():
    sampler = NoiseSampler(offset=0.05, multires_iterations=6, multires_discount=0.4)
    latents = torch.zeros(SHAPE)
    assert torch.equal(sampler(latents, gen(11)), sampler(latents, gen(11)))
    assert not torch.equal(sampler(latents, gen(11)), sampler(latents, gen(12)))
    noise = torch.randn(SHAPE)
    assert torch.equal(pyramid_noise_like(noise, gen(0), 0, 0.4), noise)
    # Global RNG untouched: the sampler only uses the generator it is given.
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    sampler(latents, gen(1))
    assert torch.equal(torch.rand(1), before)


def test_half_precision_latents_get_the_float32_draws_cast():
    latents = torch.zeros(SHAPE, dtype=torch.float16)
    noise = NoiseSampler(offset=0.05)(latents, gen(0))
    assert noise.dtype == torch.float16
    assert torch.equal(noise, NoiseSampler(offset=0.05)(latents.float(), gen(0)).half())


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"offset": -0.1}, "noise.sampler.offset"),
        ({"adaptive_offset": 0.5}, "noise.sampler.adaptive_offset"),
        ({"multires_iterations": -1}, "noise.sampler.multires_iterations"),
        ({"multires_iterations": 2.5}, "noise.sampler.multires_iterations"),
        ({"multires_discount": 1.5}, "noise.sampler.multires_discount"),
        ({"offset_random_strength": "yes"}, "noise.sampler.offset_random_strength"),
        ({"perlin_octaves": -1}, "noise.sampler.perlin_octaves"),
        ({"perlin_octaves": 2.0}, "noise.sampler.perlin_octaves"),
        ({"perlin_persistence": 1.2}, "noise.sampler.perlin_persistence"),
        ({"perlin_perturbation": -0.1}, "noise.sampler.perlin_perturbation"),
        ({"perlin_perturbation": 1.5}, "noise.sampler.perlin_perturbation"),
        ({"perlin_octaves": 6, "multires_iterations": 6}, "noise.sampler.perlin_octaves"),
        ({"ip_noise_gamma": -0.1}, "noise.sampler.ip_noise_gamma"),
        ({"ip_noise_gamma_random_strength": 1}, "noise.sampler.ip_noise_gamma_random_strength"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        NoiseSampler(**kwargs)


def test_metadata_uses_kohya_keys_and_none_when_off():
    assert NoiseSampler().metadata() == {
        "ss_noise_offset": "None",
        "ss_noise_offset_random_strength": "False",
        "ss_adaptive_noise_scale": "None",
        "ss_multires_noise_iterations": "None",
        "ss_multires_noise_discount": "0.3",
        "ss_perlin_octaves": "None",
        "ss_perlin_persistence": "None",
        "ss_perlin_perturbation": "None",
        "ss_ip_noise_gamma": "None",
        "ss_ip_noise_gamma_random_strength": "False",
    }
    on = NoiseSampler(0.05, True, 0.01, 6, 0.4).metadata()
    assert on["ss_noise_offset"] == "0.05" and on["ss_noise_offset_random_strength"] == "True"
    assert on["ss_adaptive_noise_scale"] == "0.01" and on["ss_multires_noise_iterations"] == "6"
    perlin = NoiseSampler(perlin_octaves=6, perlin_persistence=0.8, ip_noise_gamma=0.1).metadata()
    assert (perlin["ss_perlin_octaves"], perlin["ss_perlin_persistence"], perlin["ss_perlin_perturbation"]) == (
        "6",
        "0.8",
        "0.0",
    )
    assert perlin["ss_ip_noise_gamma"] == "0.1"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "noise").glob("*.yaml")))
def test_every_noise_config_composes_and_samples(name):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=None, overrides=[f"+noise={name}"])
    sampler = instantiate(cfg.noise.sampler)
    assert cfg.noise.name == name
    assert sampler(torch.zeros(SHAPE), gen(0)).shape == SHAPE


def test_min_snr_weights_hand_computed():
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.1, 0.0])
    timesteps = torch.tensor([0, 1, 2, 3])
    # SNR = 9, 1, 1/9, 0.
    eps = min_snr_weights(timesteps, alphas_cumprod, 5.0, "epsilon")
    assert torch.allclose(eps, torch.tensor([5 / 9, 1.0, 1.0, 1.0]))
    v = min_snr_weights(timesteps, alphas_cumprod, 5.0, "v_prediction")
    assert torch.allclose(v, torch.tensor([5 / 10, 1 / 2, (1 / 9) / (10 / 9), 0.0]))
    with pytest.raises(ConfigError, match="model.prediction_type"):
        min_snr_weights(timesteps, alphas_cumprod, 5.0, "sample")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_gives_the_same_noise_for_gpu_latents():
    sampler = NoiseSampler(offset=0.05, multires_iterations=6, multires_discount=0.4)
    on_cpu = sampler(torch.zeros(SHAPE), gen(4))
    on_gpu = sampler(torch.zeros(SHAPE, device="cuda"), gen(4))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)
    cuda_gen = torch.Generator("cuda").manual_seed(4)
    assert sampler(torch.zeros(SHAPE, device="cuda"), cuda_gen).device.type == "cuda"


def _fade(t: float) -> float:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def _perlin_at(corner_angles: list[list[float]], fy: float, fx: float) -> float:
    """Textbook Perlin inside one cell: corner gradients dotted with offsets, fade-weighted bilinear blend."""
    dots = [
        [math.cos(corner_angles[dy][dx]) * (fx - dx) + math.sin(corner_angles[dy][dx]) * (fy - dy) for dx in (0, 1)]
        for dy in (0, 1)
    ]
    top = dots[0][0] + _fade(fx) * (dots[0][1] - dots[0][0])
    bottom = dots[1][0] + _fade(fx) * (dots[1][1] - dots[1][0])
    return top + _fade(fy) * (bottom - top)


def reference_perlin(shape, generator, octaves, persistence):
    """Per-pixel Perlin with the documented lattice and draw order, standardised per map."""
    b, c, h, w = shape
    out = torch.zeros(shape, dtype=torch.float64)
    for octave in range(octaves):
        ch, cw = min(2**octave, h), min(2**octave, w)
        angles = (2 * math.pi * torch.rand(b, c, ch + 1, cw + 1, generator=generator)).tolist()
        for n, k, y, x in torch.cartesian_prod(*map(torch.arange, shape)).tolist():
            py, px = (y + 0.5) * ch / h, (x + 0.5) * cw / w
            iy, ix = int(py), int(px)
            corners = [row[ix : ix + 2] for row in angles[n][k][iy : iy + 2]]
            out[n, k, y, x] += _perlin_at(corners, py - iy, px - ix) * persistence**octave
    out = out - out.mean(dim=(2, 3), keepdim=True)
    return (out / out.std(dim=(2, 3), keepdim=True, correction=0)).float()


def low_band_fraction(x: torch.Tensor, cutoff: float = 1 / 8) -> float:
    """Share of non-DC spectral power at radial frequency <= cutoff (cycles/pixel); white noise: ~0.05."""
    power = torch.fft.fft2(x).abs() ** 2
    radius = (torch.fft.fftfreq(x.shape[-2]).view(-1, 1) ** 2 + torch.fft.fftfreq(x.shape[-1]) ** 2).sqrt()
    return float(power[..., (radius > 0) & (radius <= cutoff)].sum() / power[..., radius > 0].sum())


@pytest.mark.parametrize("shape", [(1, 2, 5, 7), (1, 1, 6, 4)])
def test_perlin_matches_reference_and_perturbation_follows_the_formula(shape):
    latents = torch.zeros(shape)
    pure = perlin_noise_like(latents, gen(2), 4, 0.6, 0.0)
    g = gen(2)
    assert torch.allclose(pure, reference_perlin(shape, g, 4, 0.6), atol=1e-4)
    white = torch.randn(shape, generator=g)
    mixed = math.sqrt(1 - 0.4**2) * pure + 0.4 * white
    expected = mixed / mixed.std(dim=(2, 3), keepdim=True, correction=0)
    assert torch.allclose(perlin_noise_like(latents, gen(2), 4, 0.6, 0.4), expected, atol=1e-5)


def test_perlin_is_seeded_unit_std_and_low_frequency_heavy_with_persistence_adding_roughness():
    latents = torch.zeros(4, 4, 64, 64)
    noise = perlin_noise_like(latents, gen(3), 6, 0.8, 0.4)
    assert torch.equal(noise, perlin_noise_like(latents, gen(3), 6, 0.8, 0.4))
    assert not torch.equal(noise, perlin_noise_like(latents, gen(4), 6, 0.8, 0.4))
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.01
    assert torch.allclose(noise.flatten(2).std(dim=2, correction=0), torch.ones(4, 4), atol=1e-4)
    white = low_band_fraction(torch.randn(latents.shape, generator=gen(3)))
    smooth, rough = (low_band_fraction(perlin_noise_like(latents, gen(3), 6, p, 0.0)) for p in (0.3, 0.8))
    # persistence^i weights octave i, which has 2^i cells: higher persistence means more fine detail.
    assert smooth > rough > 10 * white
    assert low_band_fraction(noise) > 10 * white
    assert abs(low_band_fraction(perlin_noise_like(latents, gen(3), 6, 0.8, 1.0)) - white) < 0.01


@pytest.mark.parametrize("size", [(5, 7), (96, 64), (1, 3)])
def test_perlin_odd_and_non_square_sizes(size):
    noise = NoiseSampler(perlin_octaves=8, perlin_persistence=0.8)(torch.zeros(2, 4, *size), gen(0))
    assert noise.shape == (2, 4, *size) and torch.isfinite(noise).all()
    assert torch.allclose(noise.flatten(2).std(dim=2, correction=0), torch.ones(2, 4), atol=1e-4)


def test_perlin_sampler_adds_the_offset_after_the_perlin_draws():
    latents = torch.zeros(SHAPE)
    noise = NoiseSampler(offset=0.05, perlin_octaves=6, perlin_persistence=0.8, perlin_perturbation=0.4)(
        latents, gen(6)
    )
    g = gen(6)
    base = perlin_noise_like(latents, g, 6, 0.8, 0.4)
    draws = torch.randn(SHAPE[0], SHAPE[1], 1, 1, generator=g)
    assert torch.allclose(noise - base, (0.05 * draws).expand(SHAPE), atol=1e-6)


def test_cpu_generator_gives_the_same_perlin_noise_on_cpu_and_cuda_latents():
    sampler = NoiseSampler(offset=0.05, perlin_octaves=6, perlin_persistence=0.8, perlin_perturbation=0.4)
    on_cpu = sampler(torch.zeros(SHAPE), gen(4))
    assert torch.equal(on_cpu, sampler(torch.zeros(SHAPE), gen(4)))
    if torch.cuda.is_available():
        on_gpu = sampler(torch.zeros(SHAPE, device="cuda"), gen(4))
        assert on_gpu.device.type == "cuda" and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)


def capture_loss(latents, noise, timesteps, prediction_type, perturbation):
    """Run per_sample_loss with a zero model, returning (loss, the noisy input the model saw)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    seen = {}

    def predict(noisy, t, hidden):
        seen["noisy"] = noisy
        return torch.zeros_like(noisy)

    args = (predict, scheduler, latents, None, noise, timesteps, prediction_type)
    return per_sample_loss(*args, input_perturbation=perturbation), seen["noisy"], scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ip_noise_moves_the_input_by_sigma_times_perturbation_and_keeps_the_target(prediction_type):
    latents, noise = torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    timesteps = torch.tensor([10, 900])
    perturbation = NoiseSampler(ip_noise_gamma=0.1).input_perturbation(latents, gen(3))
    assert torch.allclose(perturbation, 0.1 * torch.randn(SHAPE, generator=gen(3)))
    plain_loss, plain_input, scheduler = capture_loss(latents, noise, timesteps, prediction_type, None)
    loss, noisy, _ = capture_loss(latents, noise, timesteps, prediction_type, perturbation)
    sigma = (1 - scheduler.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(noisy - plain_input, sigma * perturbation, atol=1e-5)
    # A zero model's loss is mean(target^2): unchanged, so the target ignores the perturbation.
    assert torch.equal(loss, plain_loss)


def test_ip_noise_random_strength_is_one_uniform_scalar_and_off_is_none():
    latents = torch.zeros(SHAPE)
    perturbation = input_perturbation_noise(latents, gen(5), 0.1, True)
    g = gen(5)
    uniform = torch.rand(1, generator=g)
    assert torch.allclose(perturbation, 0.1 * uniform * torch.randn(SHAPE, generator=g))
    assert NoiseSampler().input_perturbation(latents, gen(5)) is None
    noise, timesteps = torch.randn(SHAPE, generator=gen(6)), torch.tensor([100, 500])
    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def predict(noisy, t, hidden):
        return noisy

    today = per_sample_loss(predict, scheduler, latents, None, noise, timesteps, "epsilon", 5.0)
    assert torch.equal(
        today, per_sample_loss(predict, scheduler, latents, None, noise, timesteps, "epsilon", 5.0, None)
    )
