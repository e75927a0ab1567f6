"""Tiny models and stand-ins for training, shared by the network-family tests."""

from __future__ import annotations

import copy
import functools

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from train.config import NetworkConfig
from train.models.tiny import make_tiny_pipeline
from train.networks import Network, NetworkTargets, build_network

# One config per shipped peft family, LoCon convs and the text encoder included.
FAMILIES = {
    "lora": "train.networks.lora.LoRA",
    "lora_fa": "train.networks.lora.LoRAFA",
    "dora": "train.networks.lora.DoRA",
    "loha": "train.networks.lycoris.LoHa",
    "lokr": "train.networks.lycoris.LoKr",
}


def family_config(family: str, **overrides) -> NetworkConfig:
    options = {"dim": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 1, "train_text_encoder": True} | overrides
    module = options.pop("module", {})
    return NetworkConfig(module={"_target_": FAMILIES[family], **module}, **options)


@functools.cache
def _tiny_pipeline():
    return make_tiny_pipeline(seed=0)


def tiny_unet() -> UNet2DConditionModel:
    """A fresh copy of the tiny model's U-Net (the same weights build_tiny_sd15 saves)."""
    return copy.deepcopy(_tiny_pipeline().unet).eval()


def tiny_text_encoder() -> CLIPTextModel:
    return copy.deepcopy(_tiny_pipeline().text_encoder).eval()


def tiny_targets(text_encoder: bool = True) -> NetworkTargets:
    return NetworkTargets(tiny_unet(), {"lora_te": tiny_text_encoder()} if text_encoder else {})


def applied(cfg: NetworkConfig, seed: int = 0, text_encoder: bool = True) -> tuple[Network, NetworkTargets, dict]:
    network = build_network(cfg)
    targets = tiny_targets(text_encoder)
    params = network.apply(targets, seed=seed)
    return network, targets, params


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 5, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def text_encoder_output(text_encoder: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        ids = _tiny_pipeline().tokenizer(["a red circle"], padding="max_length", max_length=8).input_ids
        return text_encoder(torch.tensor(ids)).last_hidden_state


def perturb(params: dict[str, list[torch.nn.Parameter]], seed: int = 7, scale: float = 0.1) -> None:
    """Stand-in for training: move every trainable tensor by a seeded random step."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params["unet"] + params["text_encoder"]:
            param.add_(torch.randn(param.shape, generator=generator) * scale)
