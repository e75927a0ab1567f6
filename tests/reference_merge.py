"""Independent readers of network files, written from A1111's and ComfyUI's published merge math.

They share no code with train/networks/: they read only a saved file's tensors and add
each module's update into a fresh base model's weights, as the UIs do when they load a
LoRA/LyCORIS file. A test that trained a network, saved it, merged it here and got the
same outputs has shown the file means to those UIs what it meant in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


def module_map(unet: nn.Module, text_encoders: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """kohya name -> Linear/Conv2d, SD 1.x naming: lora_unet_<path>, lora_te_text_model_<path>."""
    names = {}
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            names["lora_unet_" + name.replace(".", "_")] = module
    for prefix, encoder in text_encoders.items():
        for name, module in encoder.named_modules():
            if isinstance(module, nn.Linear):
                path = name if name.startswith("text_model.") else f"text_model.{name}"
                names[f"{prefix}_" + path.replace(".", "_")] = module
    return names


def _scale(t: dict[str, torch.Tensor], dim: int | None) -> float:
    # A1111 network.py calc_scale / ComfyUI: alpha / dim when both are known, else 1.
    return float(t["alpha"]) / dim if ("alpha" in t and dim is not None) else 1.0


def lora_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """A1111 network_lora: up @ down, or for a kxk conv conv2d(down^T, up)."""
    up, down = t["lora_up.weight"], t["lora_down.weight"]
    if down.dim() == 4 and down.shape[2:] != (1, 1):
        delta = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        delta = up.flatten(1) @ down.flatten(1)
    return delta.reshape(shape) * _scale(t, down.shape[0])


def loha_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """ComfyUI LoHa: (w1a w1b) * (w2a w2b), CP-decomposed when t1/t2 are present; alpha / w1b rows."""
    if "hada_t1" in t:
        m1 = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
        m2 = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
    else:
        m1 = t["hada_w1_a"] @ t["hada_w1_b"]
        m2 = t["hada_w2_a"] @ t["hada_w2_b"]
    return (m1 * m2).reshape(shape) * _scale(t, t["hada_w1_b"].shape[0])


def lokr_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """ComfyUI LoKr: kron(w1, w2); dim is the inner size of whichever factor is decomposed."""
    dim = None
    w1 = t.get("lokr_w1")
    if w1 is None:
        dim = t["lokr_w1_b"].shape[0]
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
    w2 = t.get("lokr_w2")
    if w2 is None:
        dim = t["lokr_w2_b"].shape[0]
        if "lokr_t2" in t:
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", t["lokr_t2"], t["lokr_w2_b"], t["lokr_w2_a"])
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    return torch.kron(w1, w2.contiguous()).reshape(shape) * _scale(t, dim)


def dora_update(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """A1111 apply_weight_decompose: (W + d) * dora_scale / ||W + d|| per input column, minus W."""
    merged = weight + delta
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(merged.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1)
    return merged * (dora_scale / norm) - weight


def module_update(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    if "lora_up.weight" in t:
        delta = lora_delta(t, weight.shape)
    elif "hada_w1_a" in t:
        delta = loha_delta(t, weight.shape)
    else:
        delta = lokr_delta(t, weight.shape)
    return dora_update(weight, delta, t["dora_scale"]) if "dora_scale" in t else delta


def merge_file(path, unet: nn.Module, text_encoders: dict[str, nn.Module], strength: float = 1.0) -> int:
    """Add the file's updates into the modules' weights, in place; returns the number of modules merged."""
    tensors = load_file(str(path))
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, suffix = key.partition(".")
        grouped.setdefault(name, {})[suffix] = tensor.float()
    modules = module_map(unet, text_encoders)
    unknown = sorted(set(grouped) - set(modules))
    assert not unknown, f"file names modules the model does not have: {unknown[:3]}"
    with torch.no_grad():
        for name, t in grouped.items():
            weight = modules[name].weight
            weight.add_(strength * module_update(t, weight.float()).to(weight.dtype))
    return len(grouped)
