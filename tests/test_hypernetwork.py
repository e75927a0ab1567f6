"""A1111 hypernetworks: structure, init, hooks on every attention's K/V, the .pt file A1111 and ComfyUI read."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from torch import nn

from tests.conftest import compose_run
from train.config import NetworkConfig
from train.errors import ConfigError
from train.models.tiny import make_tiny_pipeline
from train.networks import build_network
from train.networks.base import NetworkTargets
from train.networks.hypernetwork import Hypernetwork


@functools.cache
def _tiny_pipeline():
    return make_tiny_pipeline(seed=0)


def tiny_unet() -> nn.Module:
    return copy.deepcopy(_tiny_pipeline().unet).eval()


def unet_output(unet: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


@functools.cache
def base_output() -> torch.Tensor:
    return unet_output(tiny_unet())


def applied(seed: int = 0, cfg: NetworkConfig | None = None, **options) -> tuple[Hypernetwork, nn.Module]:
    net = Hypernetwork(cfg or NetworkConfig(), **options)
    unet = tiny_unet()
    net.apply(NetworkTargets(unet), seed=seed)
    return net, unet


def perturb(net: Hypernetwork, seed: int = 7) -> None:
    """Stand-in for training: every hypernetwork weight gets a clearly nonzero value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.layers.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def linears(module: nn.Module) -> list[nn.Linear]:
    return [layer for layer in module.linear if isinstance(layer, nn.Linear)]


def test_fresh_normal_init_is_small_and_zeroed_last_linear_is_exact_no_op():
    net, unet = applied()
    change = (unet_output(unet) - base_output()).abs().max().item()
    assert 0 < change < 0.05 * base_output().abs().max().item()
    with torch.no_grad():
        for pair in net.layers.values():
            for module in pair:
                linears(module)[-1].weight.zero_()
                linears(module)[-1].bias.zero_()
    assert torch.equal(unet_output(unet), base_output())


def test_hooks_reach_self_and_cross_attention_k_and_v():
    net, unet = applied()
    assert sorted(net.layers) == ["32", "64"]
    seen = []
    for width, pair in net.layers.items():
        for index, module in enumerate(pair):
            module.register_forward_hook(lambda _m, args, _o, w=width, i=index: seen.append((w, i, args[0].shape[1])))
    unet_output(unet)
    attentions = [m for name, m in unet.named_modules() if name.endswith(("attn1", "attn2"))]
    assert len(seen) == 2 * len(attentions)
    assert {("32", 0, 5), ("32", 1, 5), ("32", 0, 64), ("64", 0, 16), ("64", 1, 16)} <= set(seen)
    # A deepcopy's hooks run the copy's modules: changing the copy's width-64 v module leaves the original alone.
    before, clone = unet_output(unet), copy.deepcopy(unet)
    with torch.no_grad():
        linears(clone.hypernetwork["64"][1])[-1].bias.fill_(0.5)
    assert not torch.allclose(unet_output(clone), before, atol=1e-3)
    assert torch.equal(unet_output(unet), before)


def test_same_seed_same_init_other_seed_differs_caller_rng_untouched():
    rng = torch.get_rng_state()
    net_a, _ = applied(seed=3, weight_init="kaiming_uniform", activation="relu")
    assert torch.equal(torch.get_rng_state(), rng)
    net_b, _ = applied(seed=3, weight_init="kaiming_uniform", activation="relu")
    net_c, _ = applied(seed=4, weight_init="kaiming_uniform", activation="relu")
    pairs = list(zip(net_a.layers.parameters(), net_b.layers.parameters(), net_c.layers.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)
    assert all(p.requires_grad and p.dtype == torch.float32 for p, _, _ in pairs)


@pytest.mark.parametrize(
    ("options", "layout", "shapes"),
    [
        ({}, "Linear Linear", {0: (64, 32), 1: (32, 64)}),
        (
            {"activation": "relu", "layer_norm": True, "dropout": True, "last_layer_dropout": True},
            "Linear ReLU LayerNorm Dropout Linear LayerNorm",
            {0: (64, 32), 2: (64,), 4: (32, 64), 5: (32,)},
        ),
        (
            {"layer_structure": [1, 2, 2, 1], "activation": "swish", "dropout": True, "activate_output": True},
            "Linear Hardswish Dropout Linear Hardswish Linear Hardswish",
            {0: (64, 32), 3: (64, 64), 5: (32, 64)},
        ),
        ({"layer_structure": (1, 1.5, 1), "activation": "mish"}, "Linear Mish Linear", {0: (48, 32), 2: (32, 48)}),
    ],
)
def test_structure_and_keys_follow_a1111(options, layout, shapes):
    net, unet = applied(**options)
    module = net.layers["32"][0]
    assert " ".join(type(layer).__name__ for layer in module.linear) == layout
    state = module.state_dict()
    assert list(state) == [f"linear.{i}.{p}" for i in shapes for p in ("weight", "bias")]
    assert {i: tuple(state[f"linear.{i}.weight"].shape) for i in shapes} == shapes
    assert unet.hypernetwork is net.layers


def test_dropout_only_in_training():
    net, unet = applied(dropout=True, last_layer_dropout=True)
    perturb(net)
    unet.train()
    assert not torch.equal(unet_output(unet), unet_output(unet))
    unet.eval()
    plain, plain_unet = applied()
    with torch.no_grad():
        for width, pair in net.layers.items():
            for ours, theirs in zip(pair, plain.layers[width], strict=True):
                for a, b in zip(linears(ours), linears(theirs), strict=True):
                    b.load_state_dict(a.state_dict())
    assert torch.equal(unet_output(unet), unet_output(unet))
    assert torch.equal(unet_output(unet), unet_output(plain_unet))


def test_save_then_load_into_fresh_apply_reproduces_output(tmp_path):
    options = {"layer_structure": [1, 2, 2, 1], "activation": "elu", "layer_norm": True, "dropout": True}
    net, unet = applied(**options)
    perturb(net)
    trained = unet_output(unet)
    metadata = {
        "ss_output_name": "mine",
        "ss_steps": 12,
        "ss_new_sd_model_hash": "0123456789abcdef",
        "ss_sd_model_name": "tiny",
        "ss_seed": 3,
        "ss_tag_frequency": {"a": {"red": 1}},
        "not_ss": "dropped",
    }
    path = tmp_path / "mine.pt"
    net.save(path, metadata)
    data = torch.load(path, weights_only=True)
    assert isinstance(data[32], tuple) and all(type(sd) is dict for sd in data[32])
    assert all(t.device.type == "cpu" and t.is_contiguous() for sd in data[64] for t in sd.values())
    header = {
        "step": 12,
        "name": "mine",
        "layer_structure": [1, 2, 2, 1],
        "activation_func": "elu",
        "is_layer_norm": True,
        "weight_initialization": "Normal",
        "use_dropout": True,
        "dropout_structure": [0, 0.3, 0, 0],
        "last_layer_dropout": False,
        "activate_output": False,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny",
    }
    assert set(data) == {32, 64, "optional_info", *header}
    assert {k: data[k] for k in header} == header
    assert json.loads(data["optional_info"]) == {"ss_seed": "3", "ss_tag_frequency": '{"a": {"red": 1}}'}
    fresh, fresh_unet = applied(seed=99, **options)
    assert not torch.equal(unet_output(fresh_unet), trained)
    fresh.load(path)
    assert torch.equal(unet_output(fresh_unet), trained)


def comfy_patch(sd: dict) -> dict[int, nn.ModuleList]:
    """ComfyUI's load_hypernetwork_patch (comfy_extras/nodes_hypernetwork.py), rebuilt from the file alone."""
    activation_func = sd.get("activation_func", "linear")
    is_layer_norm = sd.get("is_layer_norm", False)
    use_dropout = sd.get("use_dropout", False)
    activate_output = sd.get("activate_output", False)
    last_layer_dropout = sd.get("last_layer_dropout", False)
    valid = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish}
    valid |= {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish}
    out = {}
    for dim in (d for d in sd if isinstance(d, int)):
        output = []
        for attn_weights in sd[dim][:2]:
            names = [k[: -len(".weight")] for k in attn_weights if k.endswith(".weight")]
            layers, i = [], 0
            while i < len(names):
                last_layer, penultimate_layer = i == len(names) - 1, i == len(names) - 2
                weight = attn_weights[f"{names[i]}.weight"]
                layer = nn.Linear(weight.shape[1], weight.shape[0])
                layer.load_state_dict({"weight": weight, "bias": attn_weights[f"{names[i]}.bias"]})
                layers.append(layer)
                if activation_func != "linear" and (not last_layer or activate_output):
                    layers.append(valid[activation_func]())
                if is_layer_norm:
                    i += 1
                    ln_weight = attn_weights[f"{names[i]}.weight"]
                    ln = nn.LayerNorm(ln_weight.shape[0])
                    ln.load_state_dict({"weight": ln_weight, "bias": attn_weights[f"{names[i]}.bias"]})
                    layers.append(ln)
                if use_dropout and not last_layer and (not penultimate_layer or last_layer_dropout):
                    layers.append(nn.Dropout(p=0.3))
                i += 1
            output.append(nn.Sequential(*layers).eval())
        out[dim] = nn.ModuleList(output)
    return out


def hook_comfy(unet: nn.Module, patch: dict[int, nn.ModuleList], strength: float) -> None:
    """ComfyUI's attn1/attn2 patch: k + hn[0](k) * strength, v + hn[1](v) * strength, chosen by k's last dim."""

    def hook(index):
        def run(_projection, args):
            x = args[0]
            return (x + patch[x.shape[-1]][index](x) * strength,) if x.shape[-1] in patch else None

        return run

    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            module.to_k.register_forward_pre_hook(hook(0))
            module.to_v.register_forward_pre_hook(hook(1))


@pytest.mark.parametrize(
    "options",
    [
        {"layer_structure": [1, 2, 2, 1], "activation": "relu", "dropout": True, "last_layer_dropout": True},
        {"layer_norm": True, "weight_init": "xavier_normal"},
        {"activation": "tanh", "layer_norm": True, "activate_output": True, "weight_init": "kaiming_normal"},
    ],
)
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_comfyui_reference_loader_reproduces_our_output(tmp_path, options, strength):
    net, unet = applied(**options)
    perturb(net)
    with net.strength(strength):
        ours = unet_output(unet)
    net.save(tmp_path / "hn.pt", {})
    reference = tiny_unet()
    hook_comfy(reference, comfy_patch(torch.load(tmp_path / "hn.pt", weights_only=True)), strength)
    torch.testing.assert_close(unet_output(reference), ours, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, base_output(), atol=1e-3)


def test_strength_scales_residual_none_turns_off_and_restores():
    net, unet = applied()
    perturb(net)
    trained = unet_output(unet)
    module, x = net.layers["32"][0], torch.randn(2, 3, 32)
    with torch.no_grad(), net.strength(0.5):
        half = module(x) - x
    torch.testing.assert_close(half, 0.5 * (module(x) - x).detach())
    with net.strength(None):
        assert torch.equal(unet_output(unet), base_output())
        assert module(x) is x
    with pytest.raises(ValueError), net.strength(0.0):
        assert torch.equal(unet_output(unet), base_output())
        raise ValueError("inside")
    assert torch.equal(unet_output(unet), trained)


def test_shipped_config_builds_a1111_defaults(tmp_path):
    net = build_network(compose_run(["network=hypernetwork", "model.path=unused"], tmp_path, tmp_path).network)
    assert isinstance(net, Hypernetwork) and net.file_suffix == ".pt"
    assert (net.layer_structure, net.activation, net.layer_norm, net.dropout_structure) == (
        [1, 2, 1],
        "linear",
        False,
        [0, 0, 0],
    )
    assert (net.activate_output, net.weight_init, net.sizes) == (False, "normal", None)


@pytest.mark.parametrize(
    ("cfg", "options", "key"),
    [
        ({}, {"layer_structure": [2, 2, 1]}, "network.module.layer_structure"),
        ({}, {"layer_structure": [1]}, "network.module.layer_structure"),
        ({}, {"layer_structure": [1, 0, 1]}, "network.module.layer_structure"),
        ({}, {"layer_structure": "1, 2, 1"}, "network.module.layer_structure"),
        ({}, {"activation": "gelu"}, "network.module.activation"),
        ({}, {"weight_init": "Normal"}, "network.module.weight_init"),
        ({}, {"sizes": [0]}, "network.module.sizes"),
        ({}, {"sizes": [32.5]}, "network.module.sizes"),
        ({}, {"layer_norm": "yes"}, "network.module.layer_norm"),
        ({}, {"dropout": 1}, "network.module.dropout"),
        ({"train_text_encoder": True}, {}, "network.train_text_encoder"),
        ({"network_dropout": 0.1}, {}, "network.network_dropout"),
        ({"rank_dropout": 0.1}, {}, "network.rank_dropout"),
        ({"module_dropout": 0.1}, {}, "network.module_dropout"),
        ({"scale_weight_norms": 1.0}, {}, "network.scale_weight_norms"),
    ],
)
def test_config_errors_name_the_key(cfg, options, key):
    with pytest.raises(ConfigError) as error:
        Hypernetwork(NetworkConfig(**cfg), **options)
    assert str(error.value).startswith(f"{key}: ")
    if key in ("network.network_dropout", "network.rank_dropout", "network.module_dropout"):
        assert "network.module.dropout" in str(error.value)


def test_apply_refuses_sizes_matching_no_width_and_a_second_hypernetwork():
    with pytest.raises(ConfigError, match=r"^network\.module\.sizes: .*\[32, 64\]"):
        applied(sizes=[320, 768])
    net, unet = applied(sizes=[64, 320])
    assert sorted(net.layers) == ["64"]
    with pytest.raises(RuntimeError, match="already has a hypernetwork"):
        Hypernetwork(NetworkConfig()).apply(NetworkTargets(unet), seed=0)


EDITS = {
    "widths": lambda data: data.pop(64),
    "activation": lambda data: data.update(activation_func="relu"),
    "layer norm": lambda data: data.update(is_layer_norm=True),
    "dropout structure": lambda data: data.update(dropout_structure=[0, 0.3, 0]),
    "layer structure": lambda data: data.update(layer_structure=[1, 4, 1]),
    "shape": lambda data: data[32][1].update({"linear.0.weight": torch.zeros(3, 32)}),
}


@pytest.mark.parametrize("problem", ["missing", "garbage", "pickle", *EDITS])
def test_load_errors_name_the_key_and_path(tmp_path, problem):
    net, _ = applied()
    good, path = tmp_path / "good.pt", tmp_path / "bad.pt"
    net.save(good, {})
    data = torch.load(good, weights_only=True)
    if problem == "garbage":
        path.write_bytes(b"not a torch file")
    elif problem == "pickle":  # a module object: torch.load(weights_only=True) refuses it, as ComfyUI would
        torch.save({32: nn.Linear(2, 2)}, path)
    elif problem != "missing":
        EDITS[problem](data)
        torch.save(data, path)
    fresh, _ = applied()
    with pytest.raises(ConfigError) as error:
        fresh.load(path, key="my.key")
    message = str(error.value)
    assert message.startswith(f"my.key: {path}: ")
    assert problem in message or problem in ("missing", "garbage", "pickle")
