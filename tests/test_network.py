"""LoRA networks: targets, ranks, deterministic no-op init, resume from a kohya file."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from train.config import NetworkConfig
from train.errors import UserError
from train.lora_format import build_metadata, kohya_state_dict, lora_layers, save_lora
from train.models.tiny import make_tiny_pipeline
from train.network import apply_lora, load_network_weights, lora_layer_count


@functools.cache
def _tiny_pipeline():
    return make_tiny_pipeline(seed=0)


def tiny_unet() -> UNet2DConditionModel:
    """A fresh copy of the tiny model's U-Net (the same weights build_tiny_sd15 saves)."""
    return copy.deepcopy(_tiny_pipeline().unet).eval()


def tiny_text_encoder() -> CLIPTextModel:
    return copy.deepcopy(_tiny_pipeline().text_encoder).eval()


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def text_encoder_output(text_encoder: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        ids = _tiny_pipeline().tokenizer(["a red circle"], padding="max_length", max_length=8).input_ids
        return text_encoder(torch.tensor(ids)).last_hidden_state


def perturb(*models: torch.nn.Module | None, seed: int = 7) -> None:
    """Stand-in for training: give every lora_up (B) nonzero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for layer in lora_layers(model).values():
                weight = layer.lora_B["default"].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.1)


def test_same_seed_same_init_and_initial_network_is_a_no_op():
    cfg = NetworkConfig(dim=4, alpha=1, train_text_encoder=True)
    base_unet, base_te = unet_output(tiny_unet()), text_encoder_output(tiny_text_encoder())
    unet_a, te_a = tiny_unet(), tiny_text_encoder()
    rng_before = torch.get_rng_state()
    params_a = apply_lora(unet_a, te_a, cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before), "apply_lora must not move the caller's RNG"
    unet_b, te_b = tiny_unet(), tiny_text_encoder()
    params_b = apply_lora(unet_b, te_b, cfg, seed=3)
    params_c = apply_lora(tiny_unet(), tiny_text_encoder(), cfg, seed=4)

    for part in ("unet", "text_encoder"):
        assert params_a[part] and all(torch.equal(a, b) for a, b in zip(params_a[part], params_b[part], strict=True))
        assert not all(torch.equal(a, c) for a, c in zip(params_a[part], params_c[part], strict=True))
    trainable = [p for m in (unet_a, te_a) for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params_a["unet"] + params_a["text_encoder"]}
    assert torch.equal(unet_output(unet_a), base_unet)
    assert torch.equal(text_encoder_output(te_a), base_te)


def test_targets_and_ranks_follow_kohya():
    unet, te = tiny_unet(), tiny_text_encoder()
    apply_lora(unet, te, NetworkConfig(dim=4, alpha=1), seed=0)
    names = set(lora_layers(unet))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in names
    assert "mid_block.attentions.0.proj_in" in names
    assert not any("resnets" in n or "conv_in" in n or "time_embedding" in n for n in names)
    assert lora_layer_count(te) == 0  # text encoder off by default

    locon = tiny_unet()
    apply_lora(locon, None, NetworkConfig(dim=4, alpha=1, conv_dim=2, conv_alpha=0.5), seed=0)
    layers = lora_layers(locon)
    assert layers["down_blocks.0.resnets.0.conv1"].r["default"] == 2
    assert layers["up_blocks.0.upsamplers.0.conv"].scaling["default"] == pytest.approx(0.25)
    assert layers["down_blocks.1.resnets.0.conv_shortcut"].r["default"] == 4  # 1x1 conv: linear dim
    assert layers["down_blocks.0.attentions.0.proj_out"].scaling["default"] == pytest.approx(0.25)

    with pytest.raises(UserError, match="network.unet_target_modules"):
        apply_lora(tiny_unet(), None, NetworkConfig(unet_target_modules=["no_such_layer"]), seed=0)


def _save(path, unet, te, cfg):
    save_lora(path, kohya_state_dict(unet, te, cfg), build_metadata(network=cfg, extra={}))


@pytest.mark.parametrize(
    "saved_cfg, loaded_cfg",
    [
        (
            NetworkConfig(dim=4, alpha=1, train_text_encoder=True),
            NetworkConfig(dim=4, alpha=1, train_text_encoder=True),
        ),
        # Resuming with another alpha rescales lora_up so the output is unchanged.
        (NetworkConfig(dim=4, alpha=1, conv_dim=2, conv_alpha=0.5), NetworkConfig(dim=4, alpha=0, conv_dim=2)),
    ],
)
def test_load_network_weights_reproduces_the_saved_network(tmp_path, saved_cfg, loaded_cfg):
    unet, te = tiny_unet(), tiny_text_encoder()
    apply_lora(unet, te, saved_cfg, seed=0)
    perturb(unet, te)
    _save(tmp_path / "net.safetensors", unet, te, saved_cfg)

    fresh_unet, fresh_te = tiny_unet(), tiny_text_encoder()
    apply_lora(fresh_unet, fresh_te, loaded_cfg, seed=1)
    assert not torch.allclose(unet_output(fresh_unet), unet_output(unet), atol=1e-3)
    load_network_weights(tmp_path / "net.safetensors", fresh_unet, fresh_te, loaded_cfg)
    torch.testing.assert_close(unet_output(fresh_unet), unet_output(unet), atol=1e-5, rtol=0)
    torch.testing.assert_close(text_encoder_output(fresh_te), text_encoder_output(te), atol=1e-5, rtol=0)


def test_load_network_weights_rejects_bad_files(tmp_path):
    cfg = NetworkConfig(dim=4, alpha=1)
    unet = tiny_unet()
    apply_lora(unet, None, cfg, seed=0)
    good = tmp_path / "good.safetensors"
    _save(good, unet, None, cfg)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")

    other_dim = tiny_unet()
    apply_lora(other_dim, None, NetworkConfig(dim=8, alpha=1), seed=0)
    locon_cfg = NetworkConfig(dim=4, alpha=1, conv_dim=2)
    locon = tiny_unet()
    apply_lora(locon, None, locon_cfg, seed=0)

    cases = [
        (tmp_path / "missing.safetensors", unet, None, cfg, "no such file"),
        (garbage, unet, None, cfg, "not a readable"),
        (good, other_dim, None, NetworkConfig(dim=8, alpha=1), "rank 4"),
        (good, locon, None, locon_cfg, "lacks modules"),
    ]
    for path, model, te, load_cfg, problem in cases:
        with pytest.raises(UserError, match=f"train.network_weights.*{problem}"):
            load_network_weights(path, model, te, load_cfg)
    # A LoCon file into a plain LoRA network: keys the model does not have.
    _save(tmp_path / "locon.safetensors", locon, None, locon_cfg)
    with pytest.raises(UserError, match="train.network_weights.*does not have"):
        load_network_weights(tmp_path / "locon.safetensors", unet, None, cfg)
