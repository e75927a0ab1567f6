"""SDXL network files: kohya's SGM module names and two text encoders, loaded back by diffusers."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from tests.network_helpers import family_config, perturb
from train.config import NetworkConfig
from train.lora_format import read_lora
from train.networks import NetworkTargets, build_network


def _load(folder) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)


def unet_output(unet) -> torch.Tensor:
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 7, config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(2, pooled, generator=generator), "time_ids": torch.tensor([[64.0] * 6] * 2)}
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context, added_cond_kwargs=added).sample


def encoder_outputs(pipe) -> list[torch.Tensor]:
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=8, return_tensors="pt").input_ids
    with torch.no_grad():
        return [pipe.text_encoder(ids).last_hidden_state, pipe.text_encoder_2(ids).text_embeds]


@pytest.fixture
def trained(tmp_path, tiny_sdxl_dir):
    def train(cfg: NetworkConfig):
        pipe = _load(tiny_sdxl_dir)
        network = build_network(cfg)
        targets = NetworkTargets.of(pipe)
        assert targets.sgm_names and set(targets.text_encoders) == {"lora_te1", "lora_te2"}
        perturb(network.apply(targets, seed=0))
        path = tmp_path / "sdxl.safetensors"
        network.save(path, {"ss_output_name": "sdxl"})
        return pipe, path

    return train


@pytest.mark.parametrize("cfg", [family_config("lora"), family_config("lora", conv_dim=None, alpha=0)])
def test_diffusers_sdxl_loader_reproduces_unet_and_both_text_encoders(tiny_sdxl_dir, trained, cfg):
    base = _load(tiny_sdxl_dir)
    pipe, path = trained(cfg)
    loaded = _load(tiny_sdxl_dir)
    loaded.load_lora_weights(path.parent, weight_name=path.name)

    expected = unet_output(pipe.unet)
    assert not torch.allclose(expected, unet_output(base.unet), atol=1e-3)
    torch.testing.assert_close(unet_output(loaded.unet), expected, atol=1e-4, rtol=0)
    for mine, theirs, untouched in zip(
        encoder_outputs(pipe), encoder_outputs(loaded), encoder_outputs(base), strict=True
    ):
        assert not torch.allclose(mine, untouched, atol=1e-3)
        torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)


def test_sdxl_files_use_kohyas_sgm_names(trained):
    _, path = trained(family_config("lora"))
    tensors, _ = read_lora(path)
    modules = {key.partition(".")[0] for key in tensors}
    assert not any(re.match(r"lora_unet_(down|up)_blocks|lora_unet_mid_block|lora_te_", m) for m in modules)
    for expected in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",  # down block 1, layer 0 attention
        "lora_unet_input_blocks_3_0_op",  # down block 0's downsampler
        "lora_unet_input_blocks_1_0_in_layers_2",  # first resnet's conv1
        "lora_unet_input_blocks_1_0_emb_layers_1",  # its time_emb_proj
        "lora_unet_middle_block_1_proj_in",
        "lora_unet_middle_block_2_out_layers_3",
        "lora_unet_output_blocks_2_2_conv",  # up block 0's upsampler, after its attention
        "lora_unet_output_blocks_0_0_skip_connection",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_1_mlp_fc2",
    ):
        assert expected in modules, expected


def test_an_sdxl_file_reloads_into_our_modules(tiny_sdxl_dir, trained):
    cfg = family_config("loha")
    pipe, path = trained(cfg)
    fresh = _load(tiny_sdxl_dir)
    network = build_network(cfg)
    network.apply(NetworkTargets.of(fresh), seed=3)
    network.load(path)
    torch.testing.assert_close(unet_output(fresh.unet), unet_output(pipe.unet), atol=1e-5, rtol=0)
    for mine, theirs in zip(encoder_outputs(pipe), encoder_outputs(fresh), strict=True):
        torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
