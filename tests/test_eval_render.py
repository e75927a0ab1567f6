"""Fixed-seed rendering of the live model: batch invariance, seeds, LoRA strength, state restored, samplers,
A1111/kohya prompt weighting and prompts past 77 tokens."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from evaluate.config import EvaluateConfig
from evaluate.pipelines import build_pipeline, encode_prompt, is_sdxl
from evaluate.prompts import PromptSpec
from evaluate.render import Renderer, RenderJob, plan_renders, preserved_training_state
from evaluate.samplers import SAMPLERS, check_sampler, make_scheduler
from train.config import ModelConfig, NetworkConfig
from train.errors import ConfigError
from train.models.loading import load_base_model
from train.networks import NetworkTargets, build_network
from train.networks.peft_network import ADAPTER, tuner_layers

PROMPTS = [PromptSpec("red circle, blue background"), PromptSpec("green square --n blurry")]


def load(model_dir):
    return load_base_model(ModelConfig(path=str(model_dir)))


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load(tiny_model_dir)


def renderer(model, **overrides) -> Renderer:
    settings = {"sampler": "euler_a", "num_inference_steps": 3, "guidance_scale": 5.0, "batch_size": 4} | overrides
    return Renderer(
        unet=model.unet,
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        scheduler_config=model.noise_scheduler.config,
        device="cpu",
        cfg=EvaluateConfig(**settings),
        default_size=(64, 64),
    )


def pixels(renders) -> list[np.ndarray]:
    return [np.asarray(render.image) for render in renders]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("sampler", ["euler_a", "ddim"])
def test_batch_size_never_changes_a_pixel(base, sampler):
    jobs = plan_renders(PROMPTS, [0, 1], [1.0], baseline=False)
    one = pixels(renderer(base, sampler=sampler, batch_size=1).render(jobs))
    four = pixels(renderer(base, sampler=sampler, batch_size=4).render(jobs))
    assert len(one) == 4 and all(same(a, b) for a, b in zip(one, four, strict=True))
    assert one[0].shape == (64, 64, 3)


def test_fast_batches_match_to_rounding(base):
    jobs = plan_renders(PROMPTS, [0, 1], [1.0], baseline=False)
    exact = pixels(renderer(base, batch_size=1).render(jobs))
    fast = renderer(base, batch_size=4)
    fast.batch_invariant = False
    for a, b in zip(exact, pixels(fast.render(jobs)), strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_seed_decides_the_image_not_its_position(base):
    prompt = PROMPTS[0]
    jobs = [RenderJob(0, prompt, i, seed, 1.0) for i, seed in enumerate([5, 6, 5, 7])]
    images = pixels(renderer(base, batch_size=4).render(jobs))
    assert same(images[0], images[2])
    assert not same(images[0], images[1]) and not same(images[1], images[3])


def test_plan_uses_a_prompts_own_seed_then_counts_up():
    prompts = [PromptSpec("a"), PromptSpec("b", seed=100)]
    jobs = plan_renders(prompts, [3, 9], [0.5, 1.0, 1.0], baseline=True)
    assert [(j.prompt_index, j.multiplier, j.seed) for j in jobs] == [
        (0, None, 3), (0, None, 9), (0, 0.5, 3), (0, 0.5, 9), (0, 1.0, 3), (0, 1.0, 9),
        (1, None, 100), (1, None, 101), (1, 0.5, 100), (1, 0.5, 101), (1, 1.0, 100), (1, 1.0, 101),
    ]  # fmt: skip


def test_prompt_options_override_the_config(base):
    r = renderer(base)
    spec = PromptSpec("x", negative_prompt="", width=72, height=64, guidance_scale=1.0, steps=2, sampler="ddim")
    jobs = [RenderJob(0, spec, 0, 1, 1.0), RenderJob(1, PROMPTS[0], 0, 1, 1.0)]
    settings = r.settings(jobs[0])
    assert (settings.width, settings.height, settings.steps, settings.sampler) == (72, 64, 2, "ddim")
    assert len(r.batches(jobs)) == 2
    assert [render.image.size for render in r.render(jobs)] == [(72, 64), (64, 64)]


def test_lora_multiplier_and_adapter_state_restored(tiny_model_dir, base):
    model = load(tiny_model_dir)
    lora = build_network(NetworkConfig(alpha=4, train_text_encoder=True))
    params = lora.apply(NetworkTargets.of(model), seed=0)
    layers = {**tuner_layers(model.unet), **{f"te.{k}": v for k, v in tuner_layers(model.text_encoder).items()}}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B[ADAPTER].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    scales = {name: layer.scaling[ADAPTER] for name, layer in layers.items()}

    jobs = plan_renders(PROMPTS[:1], [0], [0.0, 1.0], baseline=True)
    off, zero, full = pixels(renderer(model).render(jobs))
    (without_lora,) = pixels(renderer(base).render(jobs[:1]))
    assert same(off, zero) and same(off, without_lora)
    assert not same(off, full)

    assert {name: layer.scaling[ADAPTER] for name, layer in layers.items()} == scales
    assert not any(layer.disable_adapters for layer in layers.values())
    assert all(p.requires_grad for p in params["unet"] + params["text_encoder"])


def test_rng_state_and_train_modes_restored(tiny_model_dir):
    model = load(tiny_model_dir)
    model.unet.train()
    model.unet.time_embedding.eval()  # a mixed state must come back as it was
    model.text_encoder.train()
    autocast_forward = model.unet.forward  # accelerate sets an instance-level forward like this one
    model.unet.forward = autocast_forward
    sample, context = torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 32)

    def training_step():
        noise = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            return model.unet(sample + noise, torch.tensor([10]), context).sample

    torch.manual_seed(123)
    expected = training_step()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    renderer(model, num_inference_steps=2).render(plan_renders(PROMPTS, [0], [1.0], baseline=False))
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.unet.training and not model.unet.time_embedding.training and model.text_encoder.training
    assert not model.vae.training and model.unet.forward is autocast_forward
    assert torch.equal(training_step(), expected)


def test_state_guard_restores_rng_that_is_drawn_from():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout()).train()
    module[1].eval()
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with preserved_training_state({"m": module}):
        torch.randn(10), random.random(), np.random.rand()
        module.eval()
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert module.training and module[0].training and not module[1].training


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_renders(base, sampler):
    try:
        check_sampler(sampler)
    except ConfigError as error:  # lms/k_lms need scipy
        assert "pip install" in str(error)
        pytest.skip(str(error))
    job = RenderJob(0, PromptSpec("x", sampler=sampler), 0, 0, 1.0)
    (render,) = renderer(base, num_inference_steps=2).render([job])
    assert render.image.size == (64, 64)


def test_unknown_sampler_is_a_config_error(base):
    with pytest.raises(ConfigError, match=r"^evaluate\.sampler: unknown sampler 'turbo'; choose from ddim, pndm"):
        make_scheduler("turbo", base.noise_scheduler.config)


def test_scheduler_keeps_the_models_prediction_type(base):
    config = dict(base.noise_scheduler.config) | {"prediction_type": "v_prediction"}
    assert make_scheduler("dpmsolver++", config).config.prediction_type == "v_prediction"


def test_missing_options_take_the_config_then_kohyas_defaults(base):
    r = Renderer.for_model(base, device="cpu", cfg=EvaluateConfig(), default_size=(64, 64))
    kohya = r.settings(RenderJob(0, PromptSpec("x"), 0, 0, 1.0))
    assert (kohya.steps, kohya.guidance_scale, kohya.sampler, kohya.width) == (30, 7.5, "ddim", 64)
    own = r.settings(RenderJob(0, PromptSpec("x", steps=4, guidance_scale=3.0, sampler="euler"), 0, 0, 1.0))
    assert (own.steps, own.guidance_scale, own.sampler) == (4, 3.0, "euler")


# Prompt weighting and long prompts: the A1111 semantics kohya's sampler copies.
LONG = " ".join(["red"] * 70)  # 140 tokens of the tiny tokenizer: two 75-token windows


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load(tiny_sdxl_dir)


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def pipe(request, base, sdxl):
    model = base if request.param == "sd" else sdxl
    parts = {"text_encoder_2": model.text_encoder_2, "tokenizer_2": model.tokenizer_2} if model is sdxl else {}
    scheduler = make_scheduler("ddim", model.noise_scheduler.config)
    return build_pipeline(
        unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, scheduler=scheduler, **parts
    )


def diffusers_encoding(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The pipeline's own encode_prompt: plain text, truncated to 77 tokens."""
    with torch.no_grad():
        if is_sdxl(pipe):
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=text, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return embeds, pooled
        return pipe.encode_prompt(text, torch.device("cpu"), 1, False)[0], None


def ours(pipe, text: str):
    with torch.no_grad():
        return encode_prompt(pipe, text, torch.device("cpu"))


def token_count(pipe, text: str) -> int:
    return len(pipe.tokenizer(text, add_special_tokens=False).input_ids)


def a1111_weighting(plain: torch.Tensor, weights: torch.Tensor, pipe) -> torch.Tensor:
    """Each encoder's states x token weight, rescaled to the unweighted mean (A1111's original emphasis)."""
    widths = [e.config.hidden_size for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    parts = []
    for z in plain.split(widths, dim=-1):
        weighted = z * weights[None, :, None]
        parts.append(weighted * (z.mean() / weighted.mean()))
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize(
    ("text", "weight"),
    [("a (red:1.5) cat", 1.5), ("a (red) cat", 1.1), ("a [red] cat", 1 / 1.1), ("a ((red)) cat", 1.21),
     ("a (red:0.5) cat", 0.5)],
)  # fmt: skip
def test_weighted_tokens_scale_and_keep_the_mean(pipe, text, weight):
    plain, plain_pooled = diffusers_encoding(pipe, "a red cat")
    weights = torch.ones(77)
    start = 1 + token_count(pipe, "a ")
    weights[start : start + token_count(pipe, "red")] = weight
    encoded = ours(pipe, text)
    assert not torch.equal(encoded.embeds, plain)
    torch.testing.assert_close(encoded.embeds, a1111_weighting(plain, weights, pipe))
    if plain_pooled is not None:  # SDXL's pooled embedding is never weighted
        assert torch.equal(encoded.pooled, plain_pooled)


@pytest.mark.parametrize(("text", "plain"), [("a (red:1.0) cat", "a red cat"), ("a red cat", "a red cat"),
                                             (r"a \(red\) cat", "a (red) cat")])  # fmt: skip
def test_weight_one_and_plain_text_encode_as_the_pipeline_does(pipe, text, plain):
    embeds, pooled = diffusers_encoding(pipe, plain)
    encoded = ours(pipe, text)
    assert torch.equal(encoded.embeds, embeds)
    assert pooled is None or torch.equal(encoded.pooled, pooled)


def test_long_prompt_is_chunked_not_truncated(pipe):
    cat, dog = f"{LONG} cat", f"{LONG} dog"
    assert 77 < token_count(pipe, cat) <= 150
    assert torch.equal(diffusers_encoding(pipe, cat)[0], diffusers_encoding(pipe, dog)[0])  # the pipeline drops the tail
    a, b = ours(pipe, cat), ours(pipe, dog)
    assert a.embeds.shape[1] == 2 * 77
    # The first window is the pipeline's own 77 tokens; the tail lands in the second and changes it.
    assert torch.equal(a.embeds[:, :77], diffusers_encoding(pipe, cat)[0])
    assert torch.equal(a.embeds[:, :77], b.embeds[:, :77]) and not torch.equal(a.embeds[:, 77:], b.embeds[:, 77:])


def test_render_path_weights_prompts_and_keeps_their_tails(base, sdxl):
    specs = [PromptSpec("a red cat"), PromptSpec("a (red:1.0) cat"), PromptSpec("a (red:1.8) cat"),
             PromptSpec(f"{LONG} cat"), PromptSpec(f"{LONG} dog"), PromptSpec("a red cat", negative_prompt=f"{LONG} dog")]  # fmt: skip
    jobs = [RenderJob(i, spec, 0, 7, 1.0) for i, spec in enumerate(specs)]

    def render(model, batch_size: int) -> list[np.ndarray]:
        cfg = EvaluateConfig(num_inference_steps=3, guidance_scale=5.0, sampler="euler_a", batch_size=batch_size)
        return pixels(Renderer.for_model(model, device="cpu", cfg=cfg, default_size=(64, 64)).render(jobs))

    for model in (base, sdxl):
        images = render(model, 4)
        assert same(images[0], images[1]) and not same(images[0], images[2])
        assert not same(images[3], images[4]) and not same(images[0], images[5])
        # Window counts are part of the settings, so a batch never pads a prompt: any batch size, same pixels.
        assert all(same(a, b) for a, b in zip(images, render(model, 1), strict=True))
