"""Network families: targets, deterministic no-op init, trainable parts, reload, refusals."""

from __future__ import annotations

import pytest
import torch

from tests.network_helpers import (
    FAMILIES,
    applied,
    family_config,
    perturb,
    text_encoder_output,
    tiny_text_encoder,
    tiny_unet,
    unet_output,
)
from train.config import NetworkConfig
from train.errors import ConfigError, UserError
from train.networks import build_network
from train.networks.peft_network import ADAPTER, tuner_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_init_and_initial_network_is_a_no_op(family):
    cfg = family_config(family)
    base_unet, base_te = unet_output(tiny_unet()), text_encoder_output(tiny_text_encoder())
    rng_before = torch.get_rng_state()
    network_a, targets_a, params_a = applied(cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before), "apply must not move the caller's RNG"
    network_b, _, _ = applied(cfg, seed=3)
    network_c, _, _ = applied(cfg, seed=4)

    a, b, c = (network.state_dict() for network in (network_a, network_b, network_c))
    assert params_a["unet"] and params_a["text_encoder"] and a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    models = (targets_a.unet, targets_a.text_encoders["lora_te"])
    trainable = [p for m in models for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params_a["unet"] + params_a["text_encoder"]}
    torch.testing.assert_close(unet_output(targets_a.unet), base_unet, atol=1e-6, rtol=0)
    torch.testing.assert_close(text_encoder_output(targets_a.text_encoders["lora_te"]), base_te, atol=1e-6, rtol=0)


def test_targets_and_ranks_follow_kohya():
    _, targets, _ = applied(NetworkConfig(dim=4, alpha=1))
    names = set(tuner_layers(targets.unet))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in names
    assert "mid_block.attentions.0.proj_in" in names
    assert not any("resnets" in n or "conv_in" in n or "time_embedding" in n for n in names)
    assert not tuner_layers(targets.text_encoders["lora_te"])  # text encoder off by default

    _, locon, _ = applied(NetworkConfig(dim=4, alpha=1, conv_dim=2, conv_alpha=0.5))
    layers = tuner_layers(locon.unet)
    assert layers["down_blocks.0.resnets.0.conv1"].r[ADAPTER] == 2
    assert layers["up_blocks.0.upsamplers.0.conv"].scaling[ADAPTER] == pytest.approx(0.25)
    assert layers["down_blocks.1.resnets.0.conv_shortcut"].r[ADAPTER] == 4  # 1x1 conv: linear dim
    assert layers["down_blocks.0.attentions.0.proj_out"].scaling[ADAPTER] == pytest.approx(0.25)

    with pytest.raises(UserError, match="network.unet_target_modules"):
        applied(NetworkConfig(unet_target_modules=["no_such_layer"]))


def test_lora_fa_trains_only_lora_up():
    network, targets, params = applied(family_config("lora_fa"))
    layers = list(network.layers.values())
    ups = {id(layer.lora_B[ADAPTER].weight) for layer in layers}
    assert {id(p) for p in params["unet"] + params["text_encoder"]} == ups
    downs = [layer.lora_A[ADAPTER].weight.clone() for layer in layers]
    optimizer = torch.optim.SGD(params["unet"] + params["text_encoder"], lr=1.0)
    unet_output_with_grad = targets.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 5, 32))
    unet_output_with_grad.sample.square().mean().backward()
    optimizer.step()
    assert all(torch.equal(d, layer.lora_A[ADAPTER].weight) for d, layer in zip(downs, layers, strict=True))
    assert any(layer.lora_B[ADAPTER].weight.abs().sum() > 0 for layer in layers)


def test_dora_trains_a_magnitude_per_input_column():
    network, targets, params = applied(family_config("dora"))
    layer = tuner_layers(targets.unet)["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    magnitude = network.dora.magnitude(layer)
    assert magnitude.shape == (layer.get_base_layer().in_features,)
    assert any(p is magnitude for p in params["unet"])
    # Starts at the base weight's column norms: the initial network changes nothing.
    torch.testing.assert_close(magnitude, layer.get_base_layer().weight.norm(dim=0))


@pytest.mark.parametrize(
    "family, saved, loaded",
    [
        ("lora", {}, {}),
        # Resuming with another alpha rescales so the output is unchanged.
        ("lora", {"alpha": 1, "conv_alpha": 0.5}, {"alpha": 0, "conv_alpha": None}),
        ("lora_fa", {}, {}),
        ("dora", {}, {}),
        ("loha", {}, {}),
        ("loha", {"module": {"use_tucker": True}}, {"module": {"use_tucker": True}, "alpha": 1}),
        ("lokr", {}, {}),
        ("lokr", {"module": {"factor": 4, "decompose_both": True}}, {"module": {"factor": 4, "decompose_both": True}}),
        ("lokr", {"dim": 64}, {"dim": 64}),  # dim too large to factor: both Kronecker factors full
    ],
)
def test_save_then_load_reproduces_the_trained_network(tmp_path, family, saved, loaded):
    network, targets, params = applied(family_config(family, **saved), seed=0)
    perturb(params)
    network.save(tmp_path / "net.safetensors", {"ss_output_name": "net"})
    unet_expected, te_expected = unet_output(targets.unet), text_encoder_output(targets.text_encoders["lora_te"])

    fresh, fresh_targets, _ = applied(family_config(family, **loaded), seed=1)
    assert not torch.allclose(unet_output(fresh_targets.unet), unet_expected, atol=1e-3)
    fresh.load(tmp_path / "net.safetensors")
    torch.testing.assert_close(unet_output(fresh_targets.unet), unet_expected, atol=1e-5, rtol=0)
    te = fresh_targets.text_encoders["lora_te"]
    torch.testing.assert_close(text_encoder_output(te), te_expected, atol=1e-5, rtol=0)


def test_load_rejects_bad_files(tmp_path):
    network, _, _ = applied(NetworkConfig(dim=4, alpha=1), text_encoder=False)
    good = tmp_path / "good.safetensors"
    network.save(good, {})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    locon, _, _ = applied(NetworkConfig(dim=4, alpha=1, conv_dim=2), text_encoder=False)
    locon.save(tmp_path / "locon.safetensors", {})
    loha, _, _ = applied(family_config("loha", train_text_encoder=False, conv_dim=None), text_encoder=False)
    loha.save(tmp_path / "loha.safetensors", {})

    cases = [
        (NetworkConfig(dim=4, alpha=1), tmp_path / "missing.safetensors", "no such file"),
        (NetworkConfig(dim=4, alpha=1), garbage, "not a readable"),
        (NetworkConfig(dim=8, alpha=1), good, "rank 4"),
        (NetworkConfig(dim=4, alpha=1, conv_dim=2), good, "lacks modules"),
        (NetworkConfig(dim=4, alpha=1), tmp_path / "locon.safetensors", "does not have"),
        (NetworkConfig(dim=4, alpha=1), tmp_path / "loha.safetensors", "not a LoRA file"),
        (family_config("dora", train_text_encoder=False, conv_dim=None), good, "no dora_scale"),
        (family_config("loha", train_text_encoder=False, conv_dim=None, dim=8), tmp_path / "loha.safetensors", "shape"),
    ]
    for cfg, path, problem in cases:
        fresh, _, _ = applied(cfg, text_encoder=False)
        with pytest.raises(UserError, match=f"train.network_weights.*{problem}"):
            fresh.load(path)


@pytest.mark.parametrize(
    "cfg, key",
    [
        (family_config("loha", network_dropout=0.1), "network.network_dropout"),
        (family_config("lokr", module={"factor": 0}), "network.module.factor"),
        (family_config("lokr", module={"use_tucker": "yes"}), "network.module.use_tucker"),
        (family_config("loha", module={"no_such_option": 1}), "network.module.no_such_option"),
        (NetworkConfig(module={"_target_": "train.networks.lora.NoSuchFamily"}), "network.module._target_"),
        (NetworkConfig(module={"_target_": "torch.nn.Linear"}), "network.module"),
        (NetworkConfig(init_lora_weights="orthogonal"), "network.init_lora_weights"),
    ],
)
def test_bad_network_options_are_one_error_naming_the_key(cfg, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        build_network(cfg)


@pytest.mark.parametrize("key, value", [("rank_dropout", 1.0), ("module_dropout", -0.1), ("scale_weight_norms", 0)])
def test_regularizer_values_are_checked_at_load(key, value):
    with pytest.raises(ConfigError, match=f"network.{key}"):
        NetworkConfig(**{key: value})


def test_a_second_apply_is_refused():
    network, targets, _ = applied(NetworkConfig())
    with pytest.raises(RuntimeError, match="already has adapter layers"):
        build_network(NetworkConfig()).apply(targets, seed=0)
