"""kohya LoRA files: diffusers loads them to the same outputs; keys, alphas, metadata, hashes."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save
from train.network import apply_lora

from tests.test_network import perturb, text_encoder_output, unet_output
from train.config import NetworkConfig
from train.lora_format import build_metadata, kohya_state_dict, read_lora, save_lora

KOHYA_KEY = re.compile(r"lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)")


@pytest.fixture
def tiny_pipeline_dir(tiny_model_dir):
    """The tiny model saved by build_tiny_sd15: the same weights as tiny_unet()/tiny_text_encoder()."""
    return tiny_model_dir


def _load(folder) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)


def _trained_file(pipeline_dir, cfg, path):
    """Apply LoRA to the saved pipeline, 'train' it, save it in kohya format."""
    pipe = _load(pipeline_dir)
    apply_lora(pipe.unet, pipe.text_encoder, cfg, seed=0)
    perturb(pipe.unet, pipe.text_encoder)
    tensors = kohya_state_dict(pipe.unet, pipe.text_encoder, cfg)
    save_lora(path, tensors, build_metadata(network=cfg, extra={"ss_output_name": "net"}))
    return pipe, tensors


@pytest.mark.parametrize(
    "cfg",
    [
        NetworkConfig(dim=4, alpha=1),
        NetworkConfig(dim=8, alpha=1),
        NetworkConfig(dim=4, alpha=0),
        NetworkConfig(dim=4, alpha=2, conv_dim=2, conv_alpha=0.5),
        NetworkConfig(dim=4, alpha=1, train_text_encoder=True),
    ],
    ids=["dim4-alpha1", "dim8-alpha1", "alpha0", "locon", "text-encoder"],
)
def test_diffusers_load_lora_weights_reproduces_the_trained_network(tmp_path, tiny_pipeline_dir, cfg):
    base = _load(tiny_pipeline_dir)
    trained, tensors = _trained_file(tiny_pipeline_dir, cfg, tmp_path / "net.safetensors")

    loaded = _load(tiny_pipeline_dir)
    loaded.load_lora_weights(tmp_path, weight_name="net.safetensors")
    expected = unet_output(trained.unet)
    assert not torch.allclose(expected, unet_output(base.unet), atol=1e-3)
    torch.testing.assert_close(unet_output(loaded.unet), expected, atol=1e-4, rtol=0)
    if cfg.train_text_encoder:
        expected_te = text_encoder_output(trained.text_encoder)
        assert not torch.allclose(expected_te, text_encoder_output(base.text_encoder), atol=1e-3)
        torch.testing.assert_close(text_encoder_output(loaded.text_encoder), expected_te, atol=1e-4, rtol=0)
        assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in tensors)


def test_keys_and_alphas_are_kohyas(tmp_path, tiny_pipeline_dir):
    cfg = NetworkConfig(dim=4, alpha=2, conv_dim=2, conv_alpha=0.5, train_text_encoder=True)
    _, tensors = _trained_file(tiny_pipeline_dir, cfg, tmp_path / "net.safetensors")
    assert list(tensors) == sorted(tensors)
    assert all(KOHYA_KEY.fullmatch(key) for key in tensors), [k for k in tensors if not KOHYA_KEY.fullmatch(k)]
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha" in tensors
    for key, tensor in tensors.items():
        assert tensor.is_contiguous()
        if key.endswith(".alpha"):
            down = tensors[key.replace(".alpha", ".lora_down.weight")]
            is_3x3_conv = down.dim() == 4 and down.shape[-1] == 3
            assert float(tensor) == (cfg.effective_conv_alpha if is_3x3_conv else cfg.effective_alpha), key
            assert down.shape[0] == (cfg.conv_dim if is_3x3_conv else cfg.dim)


def test_metadata_and_hashes(tmp_path):
    cfg = NetworkConfig(dim=8, alpha=4, conv_dim=4, conv_alpha=1)
    extra = {"ss_learning_rate": 1e-4, "ss_seed": 42, "ss_min_snr_gamma": None, "ss_tag_frequency": {"a": {"b": 1}}}
    metadata = build_metadata(network=cfg, extra=extra)
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("8", "4.0")
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1.0"}
    assert json.loads(metadata["ss_tag_frequency"]) == {"a": {"b": 1}}
    assert metadata["ss_min_snr_gamma"] == "None" and metadata["ss_learning_rate"] == "0.0001"

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
