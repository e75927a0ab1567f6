"""SDXL: the tiny model, folder and single-file loading, text/size conditioning, kohya's SGM names."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders.lora_conversion_utils import (  # noqa: E402
    _convert_unet_lora_key,
    _maybe_map_sgm_blocks_to_diffusers,
)
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import CLIPTextModelWithProjection  # noqa: E402

from tests.conftest import compose_run  # noqa: E402
from tests.ldm_export import convert_unet, convert_vae  # noqa: E402
from train.config import ModelConfig  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402
from train.models.checks import ensure_model_available, folder_architecture  # noqa: E402
from train.models.conditioning import TextConditioning, encode_captions, size_time_ids, unet_kwargs  # noqa: E402
from train.models.loading import load_base_model  # noqa: E402
from train.models.tiny import build_tiny_sdxl, make_tiny_pipeline, make_tiny_sdxl_pipeline  # noqa: E402
from train.networks.sgm_names import kohya_sgm_lora_name, sgm_module_name  # noqa: E402

TOLERANCE = 1e-5
CAPTIONS = ["a photo of the cat", "the " * 100]  # the second is truncated at 77 tokens
CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
TE2_WEIGHTS = "text_encoder_2/model.safetensors"
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, the parts that shape the module tree.
SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
}
# Module names as they appear in a kohya SDXL LoRA file -> the diffusers module they adapt.
KOHYA_SDXL_NAMES = {
    "lora_unet_input_blocks_7_1_transformer_blocks_9_attn2_to_k": "down_blocks.2.attentions.0.transformer_blocks.9.attn2.to_k",
    "lora_unet_input_blocks_4_1_proj_in": "down_blocks.1.attentions.0.proj_in",
    "lora_unet_input_blocks_6_0_op": "down_blocks.1.downsamplers.0.conv",
    "lora_unet_input_blocks_1_0_emb_layers_1": "down_blocks.0.resnets.0.time_emb_proj",
    "lora_unet_input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "lora_unet_middle_block_2_in_layers_2": "mid_block.resnets.1.conv1",
    "lora_unet_middle_block_1_transformer_blocks_3_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.3.ff.net.0.proj",
    "lora_unet_output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "lora_unet_output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_out_0": "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "lora_unet_output_blocks_8_0_out_layers_3": "up_blocks.2.resnets.2.conv2",
}


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load_base_model(ModelConfig(path=str(tiny_sdxl_dir)))


@pytest.fixture(scope="module")
def pipeline():
    return make_tiny_sdxl_pipeline(seed=0)


def _copy(tmp: Path, folder: Path) -> Path:
    target = tmp / "copy"
    shutil.copytree(folder, target)
    return target


def _unet_out(unet, cond: TextConditioning, time_ids: torch.Tensor) -> torch.Tensor:
    latents = torch.randn(len(cond.hidden), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return unet(latents, 500, **unet_kwargs(cond, time_ids)).sample


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() < TOLERANCE


# ------------------------------------------------------------------ model and loading
def test_folder_loads_as_sdxl(sdxl, tiny_sdxl_dir, pipeline):
    assert sdxl.architecture == "sdxl" and sdxl.source == str(tiny_sdxl_dir.resolve())
    assert isinstance(sdxl.text_encoder_2, CLIPTextModelWithProjection)
    assert sdxl.tokenizer_2.pad_token == "!" and sdxl.tokenizer.pad_token == "<|endoftext|>"
    assert sdxl.text_encoder_2.name_or_path == str(tiny_sdxl_dir.resolve() / "text_encoder_2")
    for module in (sdxl.unet, sdxl.vae, sdxl.text_encoder, sdxl.text_encoder_2):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
        assert all(p.dtype == torch.float32 for p in module.parameters())
    assert sdxl.vae.config.scaling_factor == 0.13025
    assert sdxl.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 8, 8)
    config = sdxl.noise_scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end, config.steps_offset) == (
        "scaled_linear",
        0.00085,
        0.012,
        1,
    )
    assert not config.clip_sample and sdxl.prediction_type == "epsilon"
    load_base_model(ModelConfig(path=str(tiny_sdxl_dir), architecture="sdxl"))  # agreeing with the folder is fine
    cond = encode_captions(sdxl, CAPTIONS, "cpu")
    ids = size_time_ids((64, 64), (0, 0), (64, 64))
    assert _close(_unet_out(sdxl.unet, cond, ids), _unet_out(pipeline.unet, cond, ids))  # saved == built


def test_sd_folder_still_loads_as_sd(tiny_model_dir):
    model = load_base_model(ModelConfig(path=str(tiny_model_dir)))
    assert model.architecture == "sd" and model.text_encoder_2 is None and model.tokenizer_2 is None


def test_hash_covers_text_encoder_2(tmp_path, tiny_sdxl_dir, sdxl):
    copy_dir = _copy(tmp_path, tiny_sdxl_dir)
    assert load_base_model(ModelConfig(path=str(copy_dir))).model_hash == sdxl.model_hash
    weights = load_file(str(copy_dir / TE2_WEIGHTS))
    weights["text_projection.weight"] = weights["text_projection.weight"] + 0.01
    save_file(weights, str(copy_dir / TE2_WEIGHTS), metadata={"format": "pt"})
    changed = load_base_model(ModelConfig(path=str(copy_dir)))
    assert changed.model_hash != sdxl.model_hash
    assert not torch.equal(changed.text_encoder_2.text_projection.weight, sdxl.text_encoder_2.text_projection.weight)


@pytest.mark.parametrize("which", ["sdxl_as_sd", "sd_as_sdxl"])
def test_mismatched_architecture_is_one_error(tiny_sdxl_dir, tiny_model_dir, which):
    folder, setting, holds = (
        (tiny_sdxl_dir, "sd", "SDXL") if which == "sdxl_as_sd" else (tiny_model_dir, "sdxl", "SD 1.x/2.x")
    )
    with pytest.raises(ModelLoadError) as err:
        load_base_model(ModelConfig(path=str(folder), architecture=setting))
    message = str(err.value)
    assert message.startswith("model.architecture:") and holds in message and str(folder) in message


def _drop_te2_weights(folder: Path) -> None:
    (folder / TE2_WEIGHTS).unlink()


def _drop_tokenizer_2(folder: Path) -> None:
    shutil.rmtree(folder / "tokenizer_2")


def _unlist_tokenizer_2(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    del index["tokenizer_2"]
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_drop_te2_weights, ["model.path", "text_encoder_2 has no weights"]),
        (_drop_tokenizer_2, ["model.path", "tokenizer_2 lacks vocab.json, merges.txt"]),
        (_unlist_tokenizer_2, ["model.path", "lists no 'tokenizer_2'"]),
    ],
    ids=["no_te2_weights", "no_tokenizer_2", "unlisted_tokenizer_2"],
)
def test_damaged_sdxl_folder_is_named(tmp_path, tiny_sdxl_dir, damage, expected):
    folder = _copy(tmp_path, tiny_sdxl_dir)
    damage(folder)
    with pytest.raises(ModelLoadError) as err:
        load_base_model(ModelConfig(path=str(folder)))
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_build_tiny_sdxl_when_asked_and_never_over_another_model(tmp_path, tiny_model_dir):
    target = tmp_path / "cache" / "models" / "tiny-sdxl"
    ensure_model_available(ModelConfig(path=str(target), build_tiny=True, architecture="sdxl"))
    assert folder_architecture(target) == "sdxl"
    stamp = (target / TE2_WEIGHTS).stat().st_mtime_ns
    assert build_tiny_sdxl(target, seed=1) == target and (target / TE2_WEIGHTS).stat().st_mtime_ns == stamp
    with pytest.raises(ModelLoadError, match="already holds an 'sd' model"):
        build_tiny_sdxl(tiny_model_dir)


@pytest.mark.parametrize("name", ["sdxl", "tiny_sdxl"])
def test_sdxl_presets_fit_the_schema(name):
    preset = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert list(preset.pop("defaults")) == ["model_schema", "_self_"]
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), preset)
    assert merged.name == name and merged.architecture == "sdxl"
    assert OmegaConf.is_missing(merged, "path") == (name == "sdxl")


def test_tiny_sdxl_preset_composes(tmp_path):
    cfg = compose_run(["model=tiny_sdxl"], tmp_path / "out", tmp_path / "cache")
    assert cfg.model.build_tiny and cfg.model.architecture == "sdxl"
    assert Path(cfg.model.path) == tmp_path / "cache" / "models" / "tiny-sdxl"


# ------------------------------------------------------------------ single SGM file
OPEN_CLIP = "conditioner.embedders.1.model."
OPEN_CLIP_LAYER_PARTS = {
    "attn.out_proj": "self_attn.out_proj",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _open_clip_state(encoder: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """The second encoder in OpenCLIP's layout, as SGM checkpoints store it (fused qkv, transposed projection)."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {
        OPEN_CLIP + "token_embedding.weight": state["embeddings.token_embedding.weight"],
        OPEN_CLIP + "positional_embedding": state["embeddings.position_embedding.weight"],
        OPEN_CLIP + "ln_final.weight": state["final_layer_norm.weight"],
        OPEN_CLIP + "ln_final.bias": state["final_layer_norm.bias"],
        OPEN_CLIP + "text_projection": state["text_projection.weight"].T,
    }
    for layer in range(encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{layer}.", f"{OPEN_CLIP}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for sgm, hf in OPEN_CLIP_LAYER_PARTS.items():
                out[f"{dst}{sgm}.{kind}"] = state[f"{src}{hf}.{kind}"]
    return out


def _sgm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """An SDXL pipeline as an original SGM checkpoint (the layout of sd_xl_base_1.0.safetensors)."""
    label_emb = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
    state = {}
    for key, tensor in convert_unet(pipe.unet).items():
        for hf, sgm in label_emb.items():
            key = key.replace(f"model.diffusion_model.{hf}", f"model.diffusion_model.{sgm}")
        state[key] = tensor
    state.update(convert_vae(pipe.vae))
    for key, tensor in pipe.text_encoder.state_dict().items():
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        state[f"conditioner.embedders.0.transformer.{inner}"] = tensor
    state.update(_open_clip_state(pipe.text_encoder_2))
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def test_single_sgm_file_matches_folder(tmp_path, tiny_sdxl_dir, sdxl, pipeline):
    state = _sgm_state_dict(pipeline)
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight" in state
    file = tmp_path / "tiny_sdxl.safetensors"
    save_file(state, str(file))
    single = load_base_model(ModelConfig(path=str(file), config_dir=str(tiny_sdxl_dir)))
    assert single.architecture == "sdxl" and single.model_hash == hashlib.sha256(file.read_bytes()).hexdigest()
    with torch.no_grad():
        a, b = encode_captions(single, CAPTIONS, "cpu"), encode_captions(sdxl, CAPTIONS, "cpu")
        assert _close(a.hidden, b.hidden) and _close(a.pooled, b.pooled)
        ids = size_time_ids((64, 64), (0, 0), (64, 64))
        assert _close(_unet_out(single.unet, a, ids), _unet_out(sdxl.unet, b, ids))
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert _close(single.vae.encode(image).latent_dist.mean, sdxl.vae.encode(image).latent_dist.mean)
    assert single.vae_identity == sdxl.vae_identity
    with pytest.raises(ModelLoadError, match="model.architecture: .*model.config_dir"):
        ensure_model_available(ModelConfig(path=str(file), config_dir=str(tiny_sdxl_dir), architecture="sd"))


# ------------------------------------------------------------------ conditioning
def test_sdxl_encode_equals_the_pipelines(sdxl, pipeline):
    with torch.no_grad():
        ours = encode_captions(sdxl, CAPTIONS, "cpu")
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=CAPTIONS, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    assert ours.hidden.shape == (2, 77, 32 + 48) and ours.pooled.shape == (2, 32)
    assert _close(ours.hidden, embeds) and _close(ours.pooled, pooled)


def test_sd_encode_equals_the_pipelines(tiny_model_dir):
    model = load_base_model(ModelConfig(path=str(tiny_model_dir)))
    with torch.no_grad():
        ours = encode_captions(model, CAPTIONS, "cpu")
        embeds, _ = make_tiny_pipeline(seed=0).encode_prompt(CAPTIONS, torch.device("cpu"), 1, False)
    assert ours.pooled is None and _close(ours.hidden, embeds)
    assert unet_kwargs(ours, None).keys() == {"encoder_hidden_states"}
    with pytest.raises(ValueError, match="SDXL"):
        unet_kwargs(ours, size_time_ids((64, 64), (0, 0), (64, 64)))


def test_gradients_reach_trained_text_encoders(sdxl):
    model = copy.deepcopy(sdxl)
    for encoder in (model.text_encoder, model.text_encoder_2):
        encoder.requires_grad_(True)
    cond = encode_captions(model, CAPTIONS[:1], "cpu")
    (cond.hidden.square().mean() + cond.pooled.square().mean()).backward()
    for encoder in (model.text_encoder, model.text_encoder_2):
        assert encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert model.text_encoder_2.text_projection.weight.grad.abs().sum() > 0


def test_size_conditioning_order_and_effect(sdxl, pipeline):
    ids = size_time_ids((96, 64), (8, 0), (64, 64))
    assert ids.tolist() == [96, 64, 8, 0, 64, 64]
    theirs = pipeline._get_add_time_ids((96, 64), (8, 0), (64, 64), dtype=torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(ids.unsqueeze(0), theirs)
    with torch.no_grad():
        cond = encode_captions(sdxl, ["a cat", "a dog"], "cpu")
    square = size_time_ids((64, 64), (0, 0), (64, 64))
    out_square, out_cropped = _unet_out(sdxl.unet, cond, square), _unet_out(sdxl.unet, cond, ids)
    assert out_square.shape == (2, 4, 8, 8)
    assert (out_square - out_cropped).abs().max().item() > 1e-4  # size conditioning reaches the output
    per_sample = _unet_out(sdxl.unet, cond, torch.stack([square, ids]))
    assert _close(per_sample[0], out_square[0]) and _close(per_sample[1], out_cropped[1])
    with pytest.raises(ValueError, match="time_ids"):
        unet_kwargs(cond, None)


def test_text_conditioning_batches_and_cache_entries(tmp_path):
    entries = [TextConditioning(torch.randn(77, 80), torch.randn(32)) for _ in range(3)]
    batch = TextConditioning.stack(entries)
    assert batch.hidden.shape == (3, 77, 80) and batch.pooled.shape == (3, 32)
    save_file(entries[1].tensors(), str(tmp_path / "entry.safetensors"))
    loaded = TextConditioning.from_tensors(load_file(str(tmp_path / "entry.safetensors")))
    assert torch.equal(loaded.hidden, entries[1].hidden) and torch.equal(loaded.pooled, entries[1].pooled)
    repeated = TextConditioning.stack(entries[:1]).expand(4)
    assert torch.equal(repeated.hidden, entries[0].expand(4).hidden) and repeated.pooled.shape == (4, 32)
    half = batch.to("cpu", torch.float16)
    assert half.hidden.dtype == half.pooled.dtype == torch.float16
    sd = TextConditioning(torch.randn(77, 32))
    assert sd.tensors().keys() == {"hidden"} and TextConditioning.from_tensors(sd.tensors()).pooled is None
    with pytest.raises(ValueError, match="SD and SDXL"):
        TextConditioning.stack([sd, entries[0]])


# ------------------------------------------------------------------ kohya's SGM names
def _diffusers_module_path(converted: str) -> str:
    """diffusers' converted LoRA key -> the module path (drops .processor and the lora suffixes it adds)."""
    name = converted.replace(".processor", "")
    for lora, module in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")):
        name = name.replace(f"{lora}_lora.down.weight", module)
    return name.removesuffix(".lora.down.weight")


def _diffusers_reading(names: list[str], unet_config) -> dict[str, str]:
    """What diffusers' kohya-LoRA loader makes of our SGM names: our diffusers path -> its diffusers path."""
    keys = {f"{kohya_sgm_lora_name(name, unet_config)}.lora_down.weight": name for name in names}
    tagged = {key: torch.tensor([index]) for index, key in enumerate(keys)}
    by_index = dict(enumerate(keys.values()))
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(tagged), unet_config)
    return {by_index[int(t)]: _diffusers_module_path(_convert_unet_lora_key(key)) for key, t in mapped.items()}


def _adaptable_modules(unet: nn.Module) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _check_against_diffusers(unet: nn.Module) -> int:
    names = _adaptable_modules(unet)
    in_blocks = [n for n in names if n.startswith(("down_blocks.", "mid_block.", "up_blocks."))]
    assert len(in_blocks) > 0.9 * len(names)
    reading = _diffusers_reading(names, unet.config)
    wrong = {ours: theirs for ours, theirs in reading.items() if ours != theirs}
    assert not wrong, wrong
    assert len(reading) == len(names)
    return len(names)


def test_sgm_names_round_trip_through_diffusers_on_the_tiny_unet(pipeline):
    assert _check_against_diffusers(pipeline.unet) > 100


def test_sgm_names_round_trip_through_diffusers_on_full_size_sdxl():
    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    assert _check_against_diffusers(unet) > 700
    for kohya, diffusers_name in KOHYA_SDXL_NAMES.items():
        assert dict(unet.named_modules())[diffusers_name] is not None
        assert kohya_sgm_lora_name(diffusers_name, unet.config) == kohya


def test_sgm_names_spelled_out(pipeline):
    config = pipeline.unet.config
    expected = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
        "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
        "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.2.resnets.0.time_emb_proj": "output_blocks.6.0.emb_layers.1",
        "up_blocks.1.resnets.2.conv_shortcut": "output_blocks.5.0.skip_connection",
        "conv_in": "input_blocks.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    for diffusers_name, sgm in expected.items():
        assert sgm_module_name(diffusers_name, config) == sgm
    # An upsampler after a plain (attention-free) up block sits at sub-index 1 in SGM.
    plain_first = {**config, "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}
    assert sgm_module_name("up_blocks.0.upsamplers.0.conv", plain_first) == "output_blocks.2.1.conv"
    for bad in ("down_blocks.0.resnets.2.conv1", "mid_block.resnets.2.conv1", "up_blocks.0.downsamplers.0.conv"):
        with pytest.raises(ValueError):
            sgm_module_name(bad, config)
