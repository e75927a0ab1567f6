"""kohya's three LoRA dropouts, as hooks on peft's LoRA layers; active only while training.

- network_dropout: dropout on the down projection's output (kohya: ``F.dropout(lx)``);
  peft's own ``lora_dropout`` drops the layer's input instead, a different regularizer.
- rank_dropout: zero whole ranks per sample, rescaled by 1 / (1 - p).
- module_dropout: skip a module for a whole forward with probability p.

Draws come from the global RNG, as kohya's do: gradient checkpointing restores that
RNG when it recomputes a forward, so the recomputed masks equal the first ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from train.networks.peft_network import ADAPTER

if TYPE_CHECKING:  # peft loads with the adapters, not with a network's config check
    from peft.tuners.lora import LoraLayer


def drop_ranks(down_output: torch.Tensor, p: float) -> torch.Tensor:
    """Zero ranks per sample with probability ``p``; (B, r), (B, T, r) or conv (B, r, H, W)."""
    conv = down_output.dim() == 4
    rank = down_output.shape[1] if conv else down_output.shape[-1]
    keep = torch.rand((down_output.shape[0], rank), device=down_output.device) > p
    mask = keep.to(down_output.dtype) / (1.0 - p)
    if conv:
        mask = mask[:, :, None, None]
    elif down_output.dim() == 3:
        mask = mask[:, None, :]
    return down_output * mask


class KohyaDropout:
    """Attaches the configured dropouts to LoRA layers (none when all are off)."""

    def __init__(self, network_dropout: float | None, rank_dropout: float | None, module_dropout: float | None):
        self.network_dropout = network_dropout or 0.0
        self.rank_dropout = rank_dropout or 0.0
        self.module_dropout = module_dropout or 0.0
        self._skipped: set[int] = set()

    def attach(self, layers: list[LoraLayer]) -> None:
        for layer in layers:
            if self.network_dropout or self.rank_dropout:
                layer.lora_A[ADAPTER].register_forward_hook(self._drop_down_output)
            if self.module_dropout:
                layer.register_forward_pre_hook(self._maybe_skip)
                layer.register_forward_hook(self._unskip)

    def _drop_down_output(self, module, args, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        if self.network_dropout:
            output = F.dropout(output, p=self.network_dropout, training=True)
        if self.rank_dropout:
            output = drop_ranks(output, self.rank_dropout)
        return output

    def _maybe_skip(self, layer: LoraLayer, args) -> None:
        # Setting the flag directly: peft's enable_adapters() would also flip requires_grad.
        if layer.training and not layer.disable_adapters and torch.rand(1).item() < self.module_dropout:
            layer._disable_adapters = True
            self._skipped.add(id(layer))

    def _unskip(self, layer: LoraLayer, args, output):
        if id(layer) in self._skipped:
            self._skipped.discard(id(layer))
            layer._disable_adapters = False
        return output
