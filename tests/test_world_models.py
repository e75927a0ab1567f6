"""The shipped world: its files load through the user's code paths, and the judge vouches for what they do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from train.config import WORLD_DIR, ModelConfig
from train.data import world

WORLD = Path(WORLD_DIR)


@pytest.fixture(scope="session")
def judge():
    from evaluate.judge import Judge

    return Judge.load(WORLD / "world-judge")


@pytest.fixture(scope="session")
def world_model():
    from train.models.loading import load_base_model

    return load_base_model(ModelConfig(name="world", path=str(WORLD / "world-sd15")))


@pytest.fixture(scope="session")
def world_eval(tmp_path_factory):
    from tests.conftest import compose_run

    tmp = tmp_path_factory.mktemp("world-eval")
    return compose_run(["model=world", "dataset=world", "evaluate=world"], tmp / "out", tmp / "cache").evaluate


def test_the_shipped_files_are_the_ones_the_build_recorded():
    record = json.loads((WORLD / "BUILD.json").read_text())
    assert record["files"], "BUILD.json lists no files"
    for name, digest in record["files"].items():
        assert hashlib.sha256((WORLD / name).read_bytes()).hexdigest() == digest, name
    shipped = sum((WORLD / name).stat().st_size for name in record["files"])
    assert shipped <= 20e6, f"the world's weights take {shipped / 1e6:.1f} MB; the budget is 20 MB"


def test_the_base_model_loads_as_a_users_sd15_folder(world_model):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from train.models.tiny import SD15_SCHEDULER

    assert world_model.architecture == "sd" and world_model.prediction_type == "epsilon"
    assert isinstance(world_model.unet, UNet2DConditionModel) and isinstance(world_model.vae, AutoencoderKL)
    assert isinstance(world_model.text_encoder, CLIPTextModel) and isinstance(world_model.tokenizer, CLIPTokenizer)
    config = world_model.noise_scheduler.config
    assert {k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")} == {
        k: SD15_SCHEDULER[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    }
    with torch.no_grad():
        latents = world_model.vae.encode(torch.zeros(1, 3, world.SIZE, world.SIZE)).latent_dist.mode()
    assert tuple(latents.shape) == (1, 4, world.SIZE // 8, world.SIZE // 8)  # the VAE downsamples by 8, as SD's
    assert all(p.dtype == torch.float32 for p in world_model.unet.parameters())  # fp16 files, loaded as fp32


def test_the_judge_is_accurate_on_fresh_generator_images(judge):
    from evaluate.judge import accuracy

    fresh = list(world.scenes(123_457, 400, shapes=world.SHAPES))
    scores = accuracy(judge, fresh)
    assert min(scores.values()) >= 0.99, scores


def test_the_judges_star_ends_between_the_generators_star_and_a_decagon(judge):
    from evaluate import world_checks

    shares = world_checks.star_calibration(judge, (world.STAR_INNER, 0.6, 1.0), 100, seed=32)
    assert shares[world.STAR_INNER].get("star", 0) >= 0.99 and shares[0.6].get("star", 0) >= 0.9  # fatter stars count
    assert shares[1.0].get("star", 0) == 0  # a decagon is not a star


def test_a_zero_warp_is_the_identity_and_a_bend_is_seen_by_the_judge(judge):
    from evaluate import world_checks
    from evaluate.judge import accuracy

    unwarped = world_checks.warped_accuracy(judge, 200, seed=31, amplitude_px=0)
    assert {k: unwarped[k] for k in ("shape", "colour", "background")} == accuracy(
        judge, list(world.scenes(31, 200, shapes=world.SHAPES)))
    # A 6-pixel bend of a 64-pixel image changes what the shapes are: the judge must notice some.
    assert world_checks.warped_accuracy(judge, 200, seed=31, amplitude_px=6)["shape"] < unwarped["shape"]


def test_the_clip_and_aesthetic_head_load_as_real_ones_and_mean_something():
    from evaluate.aesthetic import aesthetic_scores, load_aesthetic_head
    from evaluate.clip_scores import CLIPEmbedder, clip_t_scores
    from evaluate.world_degrade import blur

    clip = CLIPEmbedder.from_path(WORLD / "world-clip")
    head = load_aesthetic_head(WORLD / "world-clip" / "aesthetic.safetensors", input_dim=clip.embed_dim)
    scenes = list(world.scenes(99, 24, shapes=world.SHAPES))
    images = [world.render(s) for s in scenes]
    embeds = clip.embed_images(images)
    own = clip_t_scores(embeds, clip.embed_texts([world.caption(s) for s in scenes]))
    # Each image against a caption naming another colour and background than its own.
    other = [world.caption(world.Scene(**{**s.__dict__, "colour": _other(s.colour, world.COLOURS),
                                          "background": _other(s.background, world.BACKGROUNDS)})) for s in scenes]
    wrong = clip_t_scores(embeds, clip.embed_texts(other))
    assert (own > wrong).float().mean() >= 0.95
    from PIL import Image

    pixels = torch.from_numpy(world.to_array(images))
    blurred = blur(pixels, 0.8, torch.Generator().manual_seed(0))
    spoilt = [Image.fromarray((p.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()) for p in blurred]
    clean_scores = aesthetic_scores(head, embeds)
    spoilt_scores = aesthetic_scores(head, clip.embed_images(spoilt))
    assert (clean_scores > spoilt_scores).float().mean() >= 0.9


def _other(value: str, options) -> str:
    names = list(options)
    return names[(names.index(value) + 1) % len(names)]


def test_the_base_model_draws_the_prompted_shape_colour_and_background(world_model, world_eval, judge):
    from evaluate import world_checks

    rendered = world_checks.render(world_model, world_eval, world_checks.seen_prompts(16, seed=5), [7])
    accuracy = world_checks.label_accuracy(judge, rendered)
    assert accuracy["shape"] >= 0.75 and accuracy["colour"] >= 0.9 and accuracy["background"] >= 0.9, accuracy


def test_the_concept_is_new_to_the_base_model(world_model, world_eval, judge):
    from evaluate import world_checks

    rendered = world_checks.render(world_model, world_eval, world_checks.concept_prompts(), [3])
    assert world_checks.concept_scores(judge, rendered)["judge_fidelity"] <= 0.1
