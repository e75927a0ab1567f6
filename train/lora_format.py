"""The kohya LoRA file format: key names, alphas, ss_* metadata, safetensors I/O.

A1111, ComfyUI and diffusers' ``load_lora_weights`` all read kohya files:
``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` with
the module path's dots turned into underscores, scaled at load time by
``alpha / rank``. We train with peft and convert its state dict with diffusers'
``convert_state_dict_to_kohya``, then fix what that converter gets wrong for
SD1.5: it writes alpha = rank and names the text encoder ``lora_te1_``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping

import torch
from diffusers.utils import convert_state_dict_to_kohya
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save

from train.atomic import write_bytes_atomic
from train.config import NetworkConfig
from train.errors import ModelLoadError

ADAPTER = "default"
UNET_PREFIX = "lora_unet"
# SD1.5 kohya files (and A1111/ComfyUI) name the single text encoder lora_te_.
TEXT_ENCODER_PREFIX = "lora_te"
KOHYA_KEY_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


def _dotted_path(component: str, module_name: str) -> str:
    """Dotted path of a module as kohya sees it, e.g. ``text_encoder.text_model.encoder...``."""
    # transformers 5 dropped CLIPTextModel's `text_model` wrapper; kohya names keep it.
    if component == "text_encoder" and not module_name.startswith("text_model."):
        module_name = f"text_model.{module_name}"
    return f"{component}.{module_name}"


def _kohya_name(dotted_path: str) -> str:
    component, _, module_name = dotted_path.partition(".")
    prefix = UNET_PREFIX if component == "unet" else TEXT_ENCODER_PREFIX
    return f"{prefix}_{module_name.replace('.', '_')}"


def canonical_module_name(kohya_module_name: str) -> str:
    """diffusers' kohya converter names the SD1.5 text encoder lora_te1_; kohya and A1111 use lora_te_."""
    if kohya_module_name.startswith("lora_te1_"):
        return f"{TEXT_ENCODER_PREFIX}_{kohya_module_name[len('lora_te1_') :]}"
    return kohya_module_name


def lora_layers(model: torch.nn.Module | None) -> dict[str, LoraLayer]:
    """peft module name -> LoRA layer, for every layer holding our adapter."""
    if model is None:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def kohya_lora_layers(unet: torch.nn.Module | None, text_encoder: torch.nn.Module | None) -> dict[str, LoraLayer]:
    """kohya module name (``lora_unet_down_blocks_0_...``) -> the peft layer it is saved from."""
    layers = {}
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        for name, layer in lora_layers(model).items():
            layers[_kohya_name(_dotted_path(component, name))] = layer
    return layers


def layer_alpha(layer: LoraLayer) -> float:
    """kohya's alpha for a peft layer: peft scales by lora_alpha / r, kohya by alpha / dim."""
    return float(layer.scaling[ADAPTER] * layer.r[ADAPTER])


def kohya_state_dict(
    unet: torch.nn.Module | None,
    text_encoder: torch.nn.Module | None,
    cfg: NetworkConfig,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The trained LoRA as kohya tensors, keys sorted; ``dtype`` None keeps the training dtype."""
    peft_state: dict[str, torch.Tensor] = {}
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        if not lora_layers(model):
            if getattr(cfg, f"train_{component}"):
                raise ValueError(f"network.train_{component} is set but the {component} has no LoRA layers")
            continue
        for key, tensor in get_peft_model_state_dict(model, adapter_name=ADAPTER).items():
            peft_state[_dotted_path(component, key)] = tensor
    converted = convert_state_dict_to_kohya(peft_state)

    layers = kohya_lora_layers(unet, text_encoder)
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in converted.items():
        module_name, _, suffix = key.partition(".")
        module_name = canonical_module_name(module_name)
        if suffix == "alpha":
            # The converter writes alpha = rank; the real alpha lives in the layer's scaling.
            tensor = torch.tensor(layer_alpha(layers[module_name]), dtype=torch.float32)
        tensor = tensor.detach().to("cpu", dtype=dtype or tensor.dtype)
        tensors[f"{module_name}.{suffix}"] = tensor.contiguous().clone()
    return dict(sorted(tensors.items()))


def _metadata_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    # kohya writes str(value) for everything else, "None" included.
    return str(value)


def build_metadata(*, network: NetworkConfig, extra: Mapping[str, object]) -> dict[str, str]:
    """kohya ``ss_*`` metadata; ``extra`` (training facts from the trainer) wins on clashes."""
    network_args: dict[str, str] = {}
    if network.conv_dim is not None:
        # kohya parses --network_args "conv_dim=4" into strings, and tools read them back so.
        network_args = {"conv_dim": str(network.conv_dim), "conv_alpha": str(network.effective_conv_alpha)}
    metadata: dict[str, object] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": network.dim,
        "ss_network_alpha": network.effective_alpha,
        "ss_network_args": network_args,
        "ss_v2": False,
        "ss_base_model_version": "sd_v1",
    }
    metadata.update(extra)
    return {key: _metadata_value(value) for key, value in metadata.items()}


def _addnet_hash_safetensors(buffer: io.BytesIO) -> str:
    """sha256 of everything after the header, as sd-webui-additional-networks hashes a file."""
    buffer.seek(0)
    header_size = int.from_bytes(buffer.read(8), "little")
    buffer.seek(header_size + 8)
    digest = hashlib.sha256()
    for chunk in iter(lambda: buffer.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _addnet_hash_legacy(buffer: io.BytesIO) -> str:
    buffer.seek(0x100000)
    return hashlib.sha256(buffer.read(0x10000)).hexdigest()[:8]


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with the metadata sorted: safetensors writes it in hash-map order,
    which changes from process to process, and equal inputs must give equal files."""
    data = save(dict(tensors), dict(metadata))
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + data[8 + header_size :]


def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """kohya's precalculate_safetensors_hashes: hash the file as saved with only its ss_* metadata."""
    training_metadata = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    buffer = io.BytesIO(_safetensors_bytes(tensors, training_metadata))
    return _addnet_hash_safetensors(buffer), _addnet_hash_legacy(buffer)


def save_lora(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a kohya LoRA file atomically, with the sshs_* hashes A1111 shows."""
    bad = sorted(k for k, v in metadata.items() if not isinstance(v, str))
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not so for {bad}")
    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = safetensors_hashes(tensors, metadata)
    write_bytes_atomic(path, _safetensors_bytes(tensors, metadata))


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; ModelLoadError naming the file if unreadable."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({error})") from error
    return tensors, dict(metadata)
