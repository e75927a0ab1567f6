"""DoRA's magnitude on the input axis, over peft's LoRA layers.

W' = (W + s·BA) · diag(m / ||W + s·BA||), the norm taken per input column (over the
output and kernel dims). That is the DoRA A1111 and ComfyUI apply from a file's
``dora_scale`` of shape (1, in[, 1, 1]); peft's own DoRA normalises per output row,
which neither UI reads back correctly. Since W' x = (W + s·BA)(c ⊙ x) with
c = m / ||W + s·BA||, the layer runs unchanged on its input scaled by c: one
pre-hook, no second copy of the LoRA math. The norm is detached, as in the DoRA
paper and peft, to save memory. m starts at ||W||, so a fresh network is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from train.networks.peft_network import ADAPTER

if TYPE_CHECKING:  # peft loads with the adapters, not with a network's config check
    from peft.tuners.lora import LoraLayer

MAGNITUDE = "dora_magnitude"


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """Norm of each input column of a Linear (out, in) or conv (out, in, kh, kw) weight: shape (in,)."""
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)


class InputAxisDoRA:
    def __init__(self):
        self.multiplier = 1.0
        self._inputs: dict[int, torch.Tensor] = {}

    def attach(self, layers: list[LoraLayer]) -> None:
        for layer in layers:
            weight = layer.get_base_layer().weight.detach().float()
            layer.register_parameter(MAGNITUDE, nn.Parameter(column_norms(weight)))
            layer.register_forward_pre_hook(self._scale_input)
            layer.register_forward_hook(self._blend)

    @staticmethod
    def magnitude(layer: LoraLayer) -> nn.Parameter:
        return getattr(layer, MAGNITUDE)

    def file_scale(self, layer: LoraLayer) -> torch.Tensor:
        """``dora_scale`` as A1111 reads it: (1, in) for Linear, (1, in, 1, 1) for conv."""
        weight = layer.get_base_layer().weight
        return self.magnitude(layer).reshape(1, -1, *[1] * (weight.dim() - 2))

    def column_scale(self, layer: LoraLayer) -> torch.Tensor:
        """c = m / ||W + s·BA|| per input column (norm detached)."""
        base = layer.get_base_layer().weight
        with torch.no_grad():
            merged = base.float() + layer.get_delta_weight(ADAPTER).float()
            norms = column_norms(merged)
        return self.magnitude(layer) / norms

    def _scale_input(self, layer: LoraLayer, args):
        if layer.disable_adapters:  # off, or skipped by module dropout: the plain base layer runs
            return None
        x = args[0]
        scale = self.column_scale(layer)
        if layer.get_base_layer().weight.dim() == 4:  # conv: one scale per input channel
            scale = scale.view(1, -1, 1, 1)
        if self.multiplier != 1.0:
            self._inputs[id(layer)] = x
        return (x * scale.to(x.dtype), *args[1:])

    def _blend(self, layer: LoraLayer, args, output):
        x = self._inputs.pop(id(layer), None)
        if x is None:
            return output
        # A1111's strength: W + multiplier · (W' - W).
        return self.multiplier * output + (1.0 - self.multiplier) * layer.get_base_layer()(x)

    @contextlib.contextmanager
    def strength(self, multiplier: float | None, lora_strength: Callable) -> Iterator[None]:
        if multiplier is None:
            with lora_strength(None):
                yield
            return
        self.multiplier = float(multiplier)
        try:
            yield
        finally:
            self.multiplier = 1.0
            self._inputs.clear()
