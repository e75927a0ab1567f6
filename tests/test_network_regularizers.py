"""Dropouts (training only) and max-norm, for every family that has them."""

from __future__ import annotations

import pytest
import torch

from tests.network_helpers import FAMILIES, applied, family_config, perturb, unet_output
from train.networks.peft_network import ADAPTER


def _down_outputs(network) -> list[torch.Tensor]:
    """Capture every LoRA down projection's output (after the dropout hooks) during one forward."""
    captured: list[torch.Tensor] = []
    handles = [
        layer.lora_A[ADAPTER].register_forward_hook(lambda m, a, out: captured.append(out.detach()))
        for layer in network.layers.values()
    ]
    return captured, handles


@pytest.mark.parametrize(
    "family, options",
    [
        ("lora", {"network_dropout": 0.3}),
        ("lora", {"rank_dropout": 0.3}),
        ("lora", {"module_dropout": 0.3}),
        ("dora", {"network_dropout": 0.2, "rank_dropout": 0.2, "module_dropout": 0.2}),
        ("loha", {"rank_dropout": 0.3, "module_dropout": 0.3}),
        ("lokr", {"rank_dropout": 0.3, "module_dropout": 0.3}),
    ],
)
def test_dropouts_act_in_training_only(tmp_path, family, options):
    network, targets, params = applied(family_config(family, train_text_encoder=False, **options), text_encoder=False)
    perturb(params)
    network.save(tmp_path / "net.safetensors", {})
    plain, plain_targets, _ = applied(family_config(family, train_text_encoder=False), text_encoder=False)
    plain.load(tmp_path / "net.safetensors")  # the same weights, no dropout
    expected = unet_output(plain_targets.unet)

    targets.unet.eval()
    torch.testing.assert_close(unet_output(targets.unet), expected, atol=1e-6, rtol=0)
    targets.unet.train()
    first, second = unet_output(targets.unet), unet_output(targets.unet)
    assert not torch.allclose(first, expected, atol=1e-5) and not torch.allclose(first, second, atol=1e-5)
    targets.unet.eval()
    torch.testing.assert_close(unet_output(targets.unet), expected, atol=1e-6, rtol=0)


def test_network_dropout_zeroes_down_outputs_and_rescales():
    network, targets, params = applied(family_config("lora", network_dropout=0.5, conv_dim=None))
    perturb(params)
    baseline, handles = _down_outputs(network)
    targets.unet.eval()
    unet_output(targets.unet)
    for handle in handles:
        handle.remove()
    dropped, handles = _down_outputs(network)
    targets.unet.train()
    torch.manual_seed(0)
    unet_output(targets.unet)
    zeros = sum(int((d == 0).sum()) for d in dropped) / sum(d.numel() for d in dropped)
    assert 0.45 < zeros < 0.55
    # The first adapted layer sees the same input either way: kept values are scaled by 1 / (1 - p).
    kept = dropped[0] != 0
    torch.testing.assert_close(dropped[0][kept], baseline[0][kept] * 2.0)


def test_rank_dropout_drops_whole_ranks_per_sample():
    network, targets, params = applied(family_config("lora", rank_dropout=0.5, conv_dim=None))
    perturb(params)
    dropped, _ = _down_outputs(network)
    targets.unet.train()
    torch.manual_seed(0)
    unet_output(targets.unet)
    tokens = [d for d in dropped if d.dim() == 3]  # (batch, tokens, rank)
    assert tokens
    for d in tokens:
        zero = d == 0
        # A rank is dropped for all tokens of a sample, or for none of them.
        assert torch.equal(zero.all(dim=1), zero.any(dim=1))
    share = sum(int((d == 0).all(dim=1).sum()) for d in tokens) / sum(d.shape[0] * d.shape[2] for d in tokens)
    assert 0.35 < share < 0.65


def test_module_dropout_skips_whole_modules():
    network, targets, params = applied(family_config("lora", module_dropout=0.5, conv_dim=None))
    perturb(params)
    calls, skipped = [0], [0]

    def count(layer, args, output):
        calls[0] += 1
        skipped[0] += int(layer.disable_adapters)  # still set while the skipped forward returns

    handles = [layer.register_forward_hook(count, prepend=True) for layer in network.layers.values()]
    targets.unet.train()
    for _ in range(4):
        unet_output(targets.unet)
    for handle in handles:
        handle.remove()
    assert 0.35 < skipped[0] / calls[0] < 0.65
    assert not any(layer.disable_adapters for layer in network.layers.values())


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_max_norm_bounds_every_module_and_counts_the_scaled_ones(family):
    network, targets, params = applied(family_config(family))
    perturb(params, scale=0.3)
    before = {name: float(network.delta_weight(layer).norm()) for name, layer in network.layers.items()}
    limit = sorted(before.values())[len(before) // 2]  # half the modules are above it
    untouched = {name: network.delta_weight(layer).clone() for name, layer in network.layers.items()}

    stats = network.apply_max_norm(limit)
    after = {name: float(network.delta_weight(layer).norm()) for name, layer in network.layers.items()}
    assert stats.keys_scaled == sum(norm > limit for norm in before.values())
    assert all(norm <= limit * (1 + 1e-4) for norm in after.values())
    for name, norm in before.items():
        if norm <= limit:
            torch.testing.assert_close(network.delta_weight(network.layers[name]), untouched[name])
        else:
            assert after[name] == pytest.approx(limit, rel=1e-4)
    assert stats.max_key_norm == pytest.approx(max(after.values()), rel=1e-4)
    assert stats.average_key_norm == pytest.approx(sum(after.values()) / len(after), rel=1e-4)
    assert network.apply_max_norm(limit).keys_scaled == 0  # already within bounds


@pytest.mark.parametrize("family", ["lora", "loha"])
def test_gradient_checkpointing_replays_the_same_dropout_masks(family):
    """The recomputed forward must draw the same masks, or the gradients would be wrong."""
    options = {"rank_dropout": 0.3, "module_dropout": 0.3} | ({"network_dropout": 0.3} if family == "lora" else {})
    grads = []
    for checkpointing in (False, True):
        network, targets, params = applied(family_config(family, train_text_encoder=False, **options))
        perturb(params)
        if checkpointing:
            targets.unet.enable_gradient_checkpointing()
        targets.unet.train()
        torch.manual_seed(11)
        sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        context = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
        targets.unet(sample, 10, encoder_hidden_states=context).sample.square().mean().backward()
        # A module that module dropout skipped has no gradient at all.
        grads.append([torch.zeros(0) if p.grad is None else p.grad.clone() for p in params["unet"]])
    assert sum(g.numel() == 0 for g in grads[0]) > 0  # some modules were skipped
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)
