"""Network files: diffusers and the UIs' merge math reproduce the trained network; keys, metadata, hashes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from tests.network_helpers import applied, family_config, perturb, text_encoder_output, unet_output
from tests.reference_merge import merge_file
from train.config import NetworkConfig
from train.lora_format import build_metadata, read_lora, save_lora
from train.networks import NetworkTargets, build_network

SUFFIXES = {
    "lora": r"lora_down\.weight|lora_up\.weight|alpha",
    "lora_fa": r"lora_down\.weight|lora_up\.weight|alpha",
    "dora": r"lora_down\.weight|lora_up\.weight|alpha|dora_scale",
    "loha": r"hada_w[12]_[ab]|hada_t[12]|alpha",
    "lokr": r"lokr_w[12](_[ab])?|lokr_t2|alpha",
}


def _load(folder) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)


def _trained(pipeline_dir, cfg: NetworkConfig, path):
    """Apply a network to the saved pipeline, 'train' it, save it."""
    pipe = _load(pipeline_dir)
    network = build_network(cfg)
    perturb(network.apply(NetworkTargets.of(pipe), seed=0))
    network.save(path, {"ss_output_name": "net"})
    return pipe, network


def _outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    return unet_output(pipe.unet), text_encoder_output(pipe.text_encoder)


@pytest.mark.parametrize(
    "cfg",
    [
        NetworkConfig(dim=4, alpha=1),
        NetworkConfig(dim=8, alpha=1),
        NetworkConfig(dim=4, alpha=0),
        NetworkConfig(dim=4, alpha=2, conv_dim=2, conv_alpha=0.5),
        NetworkConfig(dim=4, alpha=1, train_text_encoder=True),
        family_config("lora_fa"),
    ],
    ids=["dim4-alpha1", "dim8-alpha1", "alpha0", "locon", "text-encoder", "lora-fa"],
)
def test_diffusers_load_lora_weights_reproduces_the_trained_network(tmp_path, tiny_model_dir, cfg):
    base = _outputs(_load(tiny_model_dir))
    trained, _ = _trained(tiny_model_dir, cfg, tmp_path / "net.safetensors")
    expected = _outputs(trained)

    loaded = _load(tiny_model_dir)
    loaded.load_lora_weights(tmp_path, weight_name="net.safetensors")
    assert not torch.allclose(expected[0], base[0], atol=1e-3)
    torch.testing.assert_close(unet_output(loaded.unet), expected[0], atol=1e-4, rtol=0)
    if cfg.train_text_encoder:
        assert not torch.allclose(expected[1], base[1], atol=1e-3)
        torch.testing.assert_close(text_encoder_output(loaded.text_encoder), expected[1], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "family, options",
    [
        ("lora", {}),
        ("lora_fa", {}),
        ("dora", {}),
        ("dora", {"conv_dim": None}),
        ("loha", {}),
        ("loha", {"module": {"use_tucker": True}}),
        ("lokr", {}),
        ("lokr", {"module": {"factor": 4, "decompose_both": True}}),
        ("lokr", {"dim": 64}),  # both Kronecker factors full: the scale is baked into lokr_w2
        ("lokr", {"module": {"use_tucker": True}, "dim": 2}),
    ],
)
def test_the_uis_merge_math_reproduces_the_trained_network(tmp_path, tiny_model_dir, family, options):
    """A1111/ComfyUI merge each module's update into the weights; see tests/reference_merge.py."""
    trained, network = _trained(tiny_model_dir, family_config(family, **options), tmp_path / "net.safetensors")
    expected = _outputs(trained)
    with network.strength(0.5):
        half = _outputs(trained)

    for strength, wanted in ((1.0, expected), (0.5, half)):
        merged = _load(tiny_model_dir)
        count = merge_file(tmp_path / "net.safetensors", merged.unet, {"lora_te": merged.text_encoder}, strength)
        assert count == len(network.layers)
        torch.testing.assert_close(unet_output(merged.unet), wanted[0], atol=2e-5, rtol=0)
        torch.testing.assert_close(text_encoder_output(merged.text_encoder), wanted[1], atol=2e-5, rtol=0)


def test_diffusers_loads_a_dora_file_without_its_magnitudes(tmp_path, tiny_model_dir, caplog):
    """diffusers filters kohya's dora_scale (and warns): what it loads is the file's LoRA part."""
    trained, _ = _trained(
        tiny_model_dir, family_config("dora", train_text_encoder=False), tmp_path / "dora.safetensors"
    )
    tensors = load_file(tmp_path / "dora.safetensors")
    save_file({k: v for k, v in tensors.items() if "dora_scale" not in k}, tmp_path / "part.safetensors")
    lora_part = build_network(family_config("lora", train_text_encoder=False))
    part_pipe = _load(tiny_model_dir)
    lora_part.apply(NetworkTargets.of(part_pipe), seed=0)
    lora_part.load(tmp_path / "part.safetensors")

    loaded = _load(tiny_model_dir)
    with caplog.at_level(logging.WARNING):
        loaded.load_lora_weights(tmp_path, weight_name="dora.safetensors")
    assert "dora_scale" in caplog.text
    torch.testing.assert_close(unet_output(loaded.unet), unet_output(part_pipe.unet), atol=1e-4, rtol=0)
    assert not torch.allclose(unet_output(loaded.unet), unet_output(trained.unet), atol=1e-4)


@pytest.mark.parametrize("family", SUFFIXES)
def test_keys_alphas_and_metadata_per_family(tmp_path, tiny_model_dir, family):
    cfg = family_config(family)
    _, network = _trained(tiny_model_dir, cfg, tmp_path / "net.safetensors")
    tensors, metadata = read_lora(tmp_path / "net.safetensors")
    key = re.compile(rf"lora_(unet|te)_[a-z0-9_]+\.({SUFFIXES[family]})")
    assert list(tensors) == sorted(tensors)
    assert all(key.fullmatch(k) for k in tensors), [k for k in tensors if not key.fullmatch(k)][:3]
    assert "lora_unet_down_blocks_0_resnets_0_conv1.alpha" in tensors  # conv_dim: the ResNet convs too
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in tensors)
    for name, tensor in tensors.items():
        if name.endswith(".alpha"):
            conv3x3 = re.search(r"resnets_\d+_conv[12]\.|samplers_0_conv\.", name) is not None
            assert float(tensor) == (cfg.effective_conv_alpha if conv3x3 else cfg.effective_alpha), name

    args = json.loads(metadata["ss_network_args"])
    module = {"lora": "networks.lora", "lora_fa": "networks.lora_fa"}.get(family, "lycoris.kohya")
    assert metadata["ss_network_module"] == module
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    assert (args["conv_dim"], args["conv_alpha"]) == ("2", "1.0")
    assert args.get("algo") == {"dora": "locon", "loha": "loha", "lokr": "lokr"}.get(family)
    assert (args.get("dora_wd") == "True") == (family == "dora")
    assert args.get("wd_on_output") == ("False" if family == "dora" else None)
    if family == "dora":
        # A1111's input-axis layout: (1, in_features) for Linear, (1, in_channels, 1, 1) for conv.
        attention = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        assert tensors[f"{attention}.dora_scale"].shape == (1, 32)
        assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"].shape == (1, 32, 1, 1)


@pytest.mark.parametrize("conv_dim", [None, 2])
def test_dora_files_tell_lycoris_the_magnitude_is_on_the_input_axis(tmp_path, conv_dim):
    """LyCORIS >= 3.2 reads a missing wd_on_output as True (output axis); ours is the input axis."""
    network, _, _ = applied(family_config("dora", conv_dim=conv_dim, train_text_encoder=False), text_encoder=False)
    network.save(tmp_path / "dora.safetensors", {})
    with safe_open(str(tmp_path / "dora.safetensors"), framework="pt") as handle:
        args = json.loads(handle.metadata()["ss_network_args"])
        scale = handle.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale")
    assert args["dora_wd"] == "True" and args["algo"] == ("lora" if conv_dim is None else "locon")
    # LyCORIS's kohya.create_network: wd_on_output = str_bool(kwargs.get("wd_on_output", True)).
    assert "wd_on_output" in args and str(args["wd_on_output"]).lower() == "false"
    assert scale.shape == (1, 32)  # one magnitude per input column, as the flag says


def test_metadata_and_hashes(tmp_path):
    network = build_network(NetworkConfig(dim=8, alpha=4, conv_dim=4, conv_alpha=1, rank_dropout=0.1))
    extra = {"ss_learning_rate": 1e-4, "ss_seed": 42, "ss_min_snr_gamma": None, "ss_tag_frequency": {"a": {"b": 1}}}
    metadata = build_metadata(network.metadata(), extra)
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("8", "4.0")
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1.0", "rank_dropout": "0.1"}
    assert json.loads(metadata["ss_tag_frequency"]) == {"a": {"b": 1}}
    assert metadata["ss_min_snr_gamma"] == "None" and metadata["ss_learning_rate"] == "0.0001"
    assert metadata["ss_network_dropout"] == "None" and metadata["ss_scale_weight_norms"] == "None"

    # Over 1 MiB, so the legacy hash reads tensor bytes rather than an empty window.
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(300_000, dtype=torch.float32).reshape(3000, 100)}
    path = tmp_path / "net.safetensors"
    save_lora(path, tensors, {**metadata, "user_note": "not hashed"})
    read_tensors, read_metadata = read_lora(path)
    assert torch.equal(read_tensors["lora_unet_x.lora_down.weight"], tensors["lora_unet_x.lora_down.weight"])
    assert read_metadata["user_note"] == "not hashed"

    data = path.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    assert read_metadata["sshs_model_hash"] == hashlib.sha256(data[8 + header_size :]).hexdigest()
    kohya_buffer = io.BytesIO(save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")}))
    kohya_buffer.seek(0x100000)
    assert read_metadata["sshs_legacy_hash"] == hashlib.sha256(kohya_buffer.read(0x10000)).hexdigest()[:8]


def test_save_is_atomic_and_deterministic(tmp_path):
    tensors = {"lora_unet_x.alpha": torch.tensor(1.0)}
    metadata = {f"ss_key_{i}": str(i) for i in range(20)}
    save_lora(tmp_path / "a.safetensors", tensors, metadata)
    save_lora(tmp_path / "b.safetensors", tensors, dict(reversed(metadata.items())))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with pytest.raises(TypeError):
        save_lora(tmp_path / "c.safetensors", tensors, {"ss_seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
