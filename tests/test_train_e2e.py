"""End to end on the tiny model: train, save, and load the file back with diffusers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file

from train.errors import ConfigError
from train.recipe import LoRATrainingRecipe

FAST = ["train.max_train_steps=6", "train.save_every_n_steps=null", "evaluate=none", "logger=tensorboard"]


def run(cfg) -> tuple[LoRATrainingRecipe, Path]:
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    recipe.setup()
    return recipe, recipe.train()


def unet_probe(unet) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), ctx).sample


def test_saved_lora_reproduces_trained_unet_in_diffusers(make_run, tiny_model_dir):
    recipe, final = run(make_run(*FAST, "optimizer.learning_rate=1e-2"))
    trained = unet_probe(recipe.accelerator.unwrap_model(recipe.model.unet).eval())

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True)
    base = unet_probe(pipe.unet)
    pipe.load_lora_weights(final.parent, weight_name=final.name)
    loaded = unet_probe(pipe.unet)

    assert (loaded - trained).abs().max().item() < 1e-4
    assert (loaded - base).abs().max().item() > 1e-3


def test_same_config_and_seed_give_identical_lora_tensors(make_run):
    _, first = run(make_run(*FAST))
    _, second = run(make_run(*FAST))
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, other_seed = run(make_run(*FAST, "train.seed=7"))
    c = load_file(other_seed)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("lora_up.weight"))


def test_second_run_performs_zero_vae_encodes(make_run, monkeypatch, tmp_path):
    calls = []
    original = AutoencoderKL.encode

    def counting_encode(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting_encode)
    cache = tmp_path / "shared-cache"
    first, _ = run(make_run(*FAST, "dataset.flip_aug=true", cache_dir=cache))
    encoded_first = sum(calls)
    # plain and flipped training images, plus the held-out ones unflipped
    assert encoded_first == first.latents.encode_count == 2 * len(first.records) + len(first.val_records)
    calls.clear()
    second, _ = run(make_run(*FAST, "dataset.flip_aug=true", cache_dir=cache))
    assert sum(calls) == 0
    assert second.latents.encode_count == 0 and second.text_cache.encode_count == 0


def test_uncached_latents_encode_every_step(make_run):
    recipe, _ = run(make_run(*FAST, "train.cache_latents=false", "train.latent_sampling=random"))
    assert recipe.latents.encode_count == 6 * 2  # 6 steps x batch 2


def test_run_writes_checkpoints_summary_and_metadata(make_run):
    cfg = make_run(
        "train.max_train_steps=5",
        "train.save_every_n_steps=2",
        "evaluate=none",
        "logger=tensorboard",
        "noise=offset_multires",
        "train.min_snr_gamma=5",
    )
    recipe, final = run(cfg)
    out = Path(cfg.paths.output_dir)
    names = sorted(p.name for p in (out / "checkpoints").glob("*.safetensors"))
    assert names == ["lora-step000002.safetensors", "lora-step000004.safetensors", "lora.safetensors"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 5 and summary["final_checkpoint"] == str(final)
    assert summary["epochs"] == 1  # 6 images x 4 repeats / batch 2 = 12 steps per epoch
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    from safetensors import safe_open

    with safe_open(final, "pt") as f:
        meta = f.metadata()
    assert meta["ss_steps"] == "5" and meta["ss_seed"] == "42"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "1.0"
    assert meta["ss_noise_offset"] == "0.05" and meta["ss_multires_noise_iterations"] == "6"
    assert meta["ss_min_snr_gamma"] == "5.0"
    assert meta["ss_new_sd_model_hash"] == recipe.model.model_hash
    dirs = json.loads(meta["ss_dataset_dirs"])
    assert dirs == {"4_shapes": {"n_repeats": 4, "img_count": 6}}  # 2 of 8 held out for validation
    assert meta["ss_num_train_images"] == "24"
    tags = json.loads(meta["ss_tag_frequency"])["4_shapes"]
    assert sum(tags.values()) >= 8 and all(isinstance(v, int) for v in tags.values())


def test_caption_augmentation_with_text_cache_stops_in_preflight(make_run):
    # Asked for explicitly, the text cache cannot keep per-step captions: one error naming both keys.
    cfg = make_run(*FAST, "dataset.shuffle_caption=true", "train.cache_text_encoder_outputs=true")
    with pytest.raises(ConfigError, match=r"train\.cache_text_encoder_outputs: .*shuffle_caption"):
        LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir)).preflight()
    recipe, _ = run(make_run(*FAST, "dataset.shuffle_caption=true", "train.cache_text_encoder_outputs=false"))
    assert recipe.text_cache is None


def test_text_cache_left_unset_is_used_only_when_captions_are_fixed(make_run, caplog):
    # The default (null): cached when every caption is the same each step; a kohya subset with
    # shuffle_caption trains with its shuffled captions, encoded each step, and says so.
    caplog.set_level(logging.INFO, logger="train.data.captions")
    recipe, _ = run(make_run(*FAST, "dataset.shuffle_caption=true"))
    assert recipe.text_cache is None
    assert json.loads((recipe.output_dir / "train_summary.json").read_text())["text_encoder_outputs_cached"] is False
    assert "text-encoder outputs are not cached" in caplog.text
    recipe, _ = run(make_run(*FAST))
    assert recipe.text_cache is not None and recipe.text_cache.encode_count > 0


def test_resume_from_network_weights_starts_from_saved_lora(make_run):
    _, first = run(make_run(*FAST, "optimizer.learning_rate=1e-2"))
    cfg = make_run(*FAST, f"train.network_weights={first}")
    resumed = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    resumed.setup()
    saved = load_file(first)
    now = resumed.network.state_dict()
    assert set(now) == set(saved) and all(torch.allclose(now[k], saved[k]) for k in saved)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.mixed_precision=bf16"],
        ["train.gradient_checkpointing=true", "train.gradient_accumulation_steps=2"],
        ["network=locon", "network.train_text_encoder=true", "optimizer.text_encoder_lr=5e-5"],
        ["optimizer=adamw8bit", "scheduler=cosine_with_restarts"],
        ["optimizer=prodigy", "scheduler=piecewise"],
        ["train.latent_sampling=deterministic", "train.max_train_epochs=1", "train.max_train_steps=null"],
        ["model.prediction_type=v_prediction", "train.min_snr_gamma=5"],
        ["network=dora", "network.train_text_encoder=true", "train.mixed_precision=bf16"],
        ["network=loha", "network.rank_dropout=0.1", "network.module_dropout=0.1", "train.gradient_checkpointing=true"],
        ["network=hypernetwork", "train.mixed_precision=bf16", "train.gradient_checkpointing=true"],
        ["network=lokr", "network.scale_weight_norms=1.0", "train.gradient_accumulation_steps=2"],
    ],
    ids=[
        "bf16",
        "ckpt-accum",
        "locon-te",
        "adamw8bit",
        "prodigy-piecewise",
        "epochs",
        "vpred-minsnr",
        "dora-te-bf16",
        "loha-dropouts-ckpt",
        "hypernetwork-bf16-ckpt",
        "lokr-maxnorm-accum",
    ],
)
def test_training_variants_finish_with_finite_loss(make_run, overrides):
    recipe, final = run(make_run(*FAST, *overrides))
    assert final.is_file()
    assert torch.isfinite(torch.tensor(recipe.last_loss))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_follows_the_prediction_type(make_run, prediction_type):
    from types import SimpleNamespace

    from train import data

    cfg = make_run(*FAST, f"model.prediction_type={prediction_type}")
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    recipe.setup()
    batch = data.plan_epoch(recipe.records, [b.batch_size for b in recipe.blueprints], 0, 0)[0]
    state = recipe.noise_generator.get_state()
    latents = recipe._latents(batch, [False] * len(batch), [None] * len(batch))
    noise = recipe.noise_sampler(latents, recipe.noise_generator)
    t = torch.randint(0, 1000, (len(batch),), generator=recipe.noise_generator)
    sched = recipe.model.noise_scheduler
    expected = sched.get_velocity(latents, noise, t) if prediction_type == "v_prediction" else noise
    recipe.noise_generator.set_state(state)
    recipe.model.unet.forward = lambda x, *a, **k: SimpleNamespace(sample=torch.zeros_like(x))
    loss = recipe._loss(batch)  # the model predicts 0, so the loss is the target's mean square
    assert torch.allclose(loss, expected.pow(2).mean(), rtol=1e-5)
