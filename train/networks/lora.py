"""LoRA and LoCon (kohya's networks.lora), LoRA-FA (networks.lora_fa) and DoRA, on peft's LoRA layers.

kohya's networks.lora is the reference: the same layers, the same ``alpha / dim``
scale (peft's ``lora_alpha / r`` with ``lora_alpha = alpha``), the same init (A
random, B zero, so a fresh network changes nothing), and kohya's three dropouts.
Files are kohya's ``lora_down`` / ``lora_up`` / ``alpha`` keys, which diffusers'
``load_lora_weights``, A1111 and ComfyUI all read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from train.errors import ConfigError
from train.networks.dora import InputAxisDoRA
from train.networks.dropout import KohyaDropout
from train.networks.kohya_defaults import DORA_AXIS, KohyaDifference
from train.networks.peft_network import (
    ADAPTER,
    PeftNetwork,
    check_shape,
    fail,
    file_alpha,
    layer_alpha,
)

if TYPE_CHECKING:  # peft loads with the adapters, not with a network's config check
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

# network.init_lora_weights -> peft's init_lora_weights; both draw A at random and zero B.
LORA_INITS = {"kaiming": True, "default": True, "gaussian": "gaussian"}


class LoRA(PeftNetwork):
    """LoRA on the attention layers; with ``network.conv_dim`` also the ResNet convs (LoCon)."""

    network_module = "networks.lora"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.init_lora_weights not in LORA_INITS:
            raise ConfigError(
                f"network.init_lora_weights: must be one of {sorted(LORA_INITS)}, got {cfg.init_lora_weights!r}"
            )
        self.dropout = KohyaDropout(cfg.network_dropout, cfg.rank_dropout, cfg.module_dropout)

    def peft_config(self, targets, rank_pattern, alpha_pattern) -> LoraConfig:
        from peft import LoraConfig

        return LoraConfig(
            r=self.cfg.dim,
            lora_alpha=self.cfg.effective_alpha,
            target_modules=targets,
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            init_lora_weights=LORA_INITS[self.cfg.init_lora_weights],
        )

    def after_apply(self, layers) -> None:
        self.dropout.attach(list(layers.values()))

    def file_suffixes(self) -> tuple[str, ...]:
        return ("lora_down.weight", "lora_up.weight", "alpha")

    def layer_tensors(self, layer: LoraLayer):
        return {
            "lora_down.weight": layer.lora_A[ADAPTER].weight,
            "lora_up.weight": layer.lora_B[ADAPTER].weight,
            "alpha": torch.tensor(layer_alpha(layer), dtype=torch.float32),
        }

    def load_layer(self, name, layer: LoraLayer, tensors, path, key) -> None:
        """The file's alpha may differ from the config's: lora_up is rescaled by file_alpha / config_alpha
        so the loaded network computes the saved one's output."""
        if "lora_down.weight" not in tensors or "lora_up.weight" not in tensors:
            fail(path, f"{name} needs both lora_down.weight and lora_up.weight", key)
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        down_param, up_param = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if down.shape != down_param.shape or up.shape != up_param.shape:
            rank_key = "network.conv_dim" if down.dim() == 4 and down.shape[-1] > 1 else "network.dim"
            fail(
                path,
                f"{name} has rank {down.shape[0]} (shapes {tuple(down.shape)}, {tuple(up.shape)}) "
                f"but the configured network has rank {layer.r[ADAPTER]} ({rank_key})",
                key,
            )
        alpha = file_alpha(tensors, down.shape[0], name, path, key)
        down_param.copy_(down.to(down_param.dtype))
        up_param.copy_((up.double() * (alpha / layer_alpha(layer))).to(up_param.dtype))

    def norm_factors(self, layer: LoraLayer):
        return [(layer.lora_A[ADAPTER].weight, 0.5), (layer.lora_B[ADAPTER].weight, 0.5)]


class LoRAFA(LoRA):
    """LoRA-FA: A (lora_down) stays at its random init; only B trains. Half the optimizer state."""

    network_module = "networks.lora_fa"

    def trainable_parameters(self, layer: LoraLayer) -> list[nn.Parameter]:
        return list(layer.lora_B[ADAPTER].parameters())

    def norm_factors(self, layer: LoraLayer):
        return [(layer.lora_B[ADAPTER].weight, 1.0)]  # A is frozen: B carries the whole ratio


class DoRA(LoRA):
    """DoRA: LoRA plus a learned per-input-column magnitude, saved as LyCORIS ``dora_scale``.

    The magnitude sits on the input axis, the variant A1111 and ComfyUI apply
    (peft's DoRA normalises the output axis, which neither UI reads back correctly).
    """

    network_module = "lycoris.kohya"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.dora = InputAxisDoRA()

    @property
    def algo(self) -> str:
        return "locon" if self.cfg.conv_dim is not None else "lora"

    def network_args(self) -> dict[str, str]:
        # LyCORIS >= 3.2 reads a missing wd_on_output as True (output axis); say ours is the input axis.
        return super().network_args() | {"dora_wd": "True", "wd_on_output": "False"}

    def kohya_differences(self) -> list[KohyaDifference]:
        return [*super().kohya_differences(), DORA_AXIS]

    def after_apply(self, layers) -> None:
        super().after_apply(layers)  # dropout hooks first: module dropout decides before DoRA rescales
        self.dora.attach(list(layers.values()))

    def file_suffixes(self) -> tuple[str, ...]:
        return (*super().file_suffixes(), "dora_scale")

    def layer_tensors(self, layer: LoraLayer):
        return super().layer_tensors(layer) | {"dora_scale": self.dora.file_scale(layer)}

    def load_layer(self, name, layer: LoraLayer, tensors, path, key) -> None:
        super().load_layer(name, layer, tensors, path, key)
        if "dora_scale" not in tensors:
            fail(path, f"{name} has no dora_scale: not a DoRA file (use network=lora for it)", key)
        magnitude = self.dora.magnitude(layer)
        scale = tensors["dora_scale"]
        check_shape(self.dora.file_scale(layer), scale, f"{name}.dora_scale", path, key, "input-axis DoRA")
        magnitude.copy_(scale.reshape(magnitude.shape).to(magnitude.dtype))

    def strength(self, multiplier: float | None):
        return self.dora.strength(multiplier, super().strength)
