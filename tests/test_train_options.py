"""The trainer with each network family, the regularizers, the data options and SDXL, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_train_e2e import FAST, run, unet_probe
from train.errors import UserError
from train.lora_format import read_lora
from train.recipe import LoRATrainingRecipe


def _probe(recipe) -> torch.Tensor:
    unet = recipe.model.unet.eval()
    return unet_probe(unet) if recipe.model.architecture == "sd" else None


@pytest.mark.parametrize("network", ["lora", "locon", "lora_fa", "dora", "loha", "lokr", "hypernetwork"])
def test_every_family_trains_saves_and_resumes(make_run, network):
    recipe, final = run(make_run(*FAST, f"network={network}", "optimizer.learning_rate=1e-2"))
    assert final.suffix == (".pt" if network == "hypernetwork" else ".safetensors") and final.is_file()
    assert torch.isfinite(torch.tensor(recipe.last_loss))
    cfg = make_run(*FAST, f"network={network}", f"train.network_weights={final}")
    resumed = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    resumed.setup()
    torch.testing.assert_close(_probe(resumed), _probe(recipe), atol=1e-5, rtol=0)


def test_max_norm_bounds_the_trained_network_and_logs_each_step(make_run):
    cfg = make_run(*FAST, "network.scale_weight_norms=0.05", "optimizer.learning_rate=5e-2")
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    recipe.setup()
    logged = []
    recipe.run_log.scalars = lambda step, values: logged.append(values)
    recipe.train()
    with torch.no_grad():
        norms = [float(recipe.network.delta_weight(layer).norm()) for layer in recipe.network.layers.values()]
    assert max(norms) <= 0.05 * (1 + 1e-4)
    assert len(logged) == 6 and all("max_norm/keys_scaled" in values for values in logged)
    assert logged[-1]["max_norm/keys_scaled"] > 0 and logged[-1]["max_norm/max_key_norm"] <= 0.05 * (1 + 1e-4)
    _, metadata = read_lora(recipe.checkpoints[6])
    assert metadata["ss_scale_weight_norms"] == "0.05"


def _reg_folder(root: Path) -> Path:
    folder = root / "reg" / "2_shape"
    folder.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (64, 64), (40 * index, 90, 200)).save(folder / f"reg{index}.png")
    return root / "reg"


def test_prior_loss_weight_scales_the_regularization_images(make_run, tmp_path):
    cfg = make_run(*FAST, f"dataset.reg_data_dir={_reg_folder(tmp_path)}", "dataset.validation_split=0")
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    recipe.setup()
    regs = [r for r in recipe.records if r.subset.is_reg]
    train = [r for r in recipe.records if not r.subset.is_reg and r.bucket == regs[0].bucket]
    assert len(regs) == 3 and train
    assert all(r.caption == "shape" for r in regs)

    def loss(batch, weight):
        recipe.cfg.train.prior_loss_weight = weight
        generator, rng = recipe.noise_generator.get_state(), recipe.rng.getstate()
        with torch.no_grad():
            value = float(recipe._loss(batch))
        recipe.noise_generator.set_state(generator)
        recipe.rng.setstate(rng)
        return value

    mixed = [train[0], regs[0]]
    zero, one, two = (loss(mixed, w) for w in (0.0, 1.0, 2.0))
    assert two > one > zero and one == pytest.approx((zero + two) / 2, rel=1e-5)
    assert loss(train[:1], 0.0) == pytest.approx(loss(train[:1], 2.0))  # training images keep weight 1


def test_pixel_augmentations_need_uncached_latents(make_run):
    for option in ("dataset.color_aug=true", "dataset.random_crop=true"):
        cfg = make_run(*FAST, option)
        recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
        with pytest.raises(UserError, match=r"^train\.cache_latents: .*set train\.cache_latents=false"):
            recipe.preflight()
    recipe, final = run(
        make_run(*FAST, "dataset.color_aug=true", "dataset.random_crop=true", "train.cache_latents=false")
    )
    assert final.is_file() and recipe.latents.encode_count > 0
    _, metadata = read_lora(final)
    assert (metadata["ss_color_aug"], metadata["ss_random_crop"]) == ("True", "True")


def test_ip_noise_and_perlin_noise_change_what_is_learned(make_run):
    _, plain = run(make_run(*FAST))
    baseline, _ = read_lora(plain)
    for overrides in (["noise.sampler.ip_noise_gamma=0.1"], ["noise=perlin"]):
        _, final = run(make_run(*FAST, *overrides))
        tensors, metadata = read_lora(final)
        assert any(not torch.equal(baseline[k], tensors[k]) for k in baseline)
    assert metadata["ss_perlin_octaves"] == "6"


@pytest.mark.parametrize(
    "overrides",
    [
        ["evaluate=demo", "evaluate.every_n_steps=3", "evaluate.num_inference_steps=2", "evaluate.seeds=[0]"],
        ["network.train_text_encoder=true", "train.cache_latents=false", "dataset.random_crop=true", "network=locon"],
    ],
    ids=["cached-evaluated", "text-encoders-uncached-crop"],
)
def test_sdxl_trains_end_to_end(make_run, tiny_sdxl_dir, overrides):
    cfg = make_run(*FAST, "model=tiny_sdxl", f"model.path={tiny_sdxl_dir}", *overrides)
    recipe, final = run(cfg)
    assert recipe.model.architecture == "sdxl" and torch.isfinite(torch.tensor(recipe.last_loss))
    tensors, metadata = read_lora(final)
    modules = {key.partition(".")[0] for key in tensors}
    assert any(m.startswith("lora_unet_input_blocks_") for m in modules)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    if recipe.trainable["text_encoder"]:
        assert {m.split("_text_model")[0] for m in modules if "_te" in m} == {"lora_te1", "lora_te2"}
    if recipe.evaluator is not None:
        results = json.loads((Path(cfg.paths.output_dir) / "eval_results.json").read_text())
        assert [e["step"] for e in results["evaluations"]] == [3, 6]
        assert all(Path(e["grid_path"]).is_file() for e in results["evaluations"])


def test_sdxl_size_conditioning_follows_each_images_size_crop_and_flip(make_run, tiny_sdxl_dir):
    cfg = make_run(*FAST, "model=tiny_sdxl", f"model.path={tiny_sdxl_dir}")
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    recipe.setup()
    record = next(r for r in recipe.records if r.original_size != r.bucket)
    straight = recipe._conditioning([record], [False], [None], epoch=0).time_ids[0].tolist()
    flipped = recipe._conditioning([record], [True], [None], epoch=0).time_ids[0].tolist()
    (width, height), (bucket_w, bucket_h) = record.original_size, record.bucket
    assert straight[:2] == [height, width] and straight[4:] == [bucket_h, bucket_w]
    assert straight[2:4] != flipped[2:4] or straight[3] == 0  # a left offset mirrors under a flip
