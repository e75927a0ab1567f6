"""Text and size conditioning for the U-Net, per architecture.

SD 1.x/2.x condition on the text encoder's last hidden states. SDXL conditions
on both encoders' penultimate hidden states side by side, plus a pooled
embedding and six size numbers (``add_time_ids``), as diffusers'
StableDiffusionXLPipeline.encode_prompt and kohya's scripts compute them, so a
LoRA trained here behaves the same in their pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import CLIPTokenizer

from train.models.loading import BaseModel

HIDDEN_KEY = "hidden"
POOLED_KEY = "pooled"


@dataclass
class TextConditioning:
    """One caption's (unbatched) or a batch's text conditioning; ``pooled`` is SDXL's only."""

    hidden: Tensor
    pooled: Tensor | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextConditioning:
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return TextConditioning(self.hidden.to(device=device, dtype=dtype), pooled)

    @classmethod
    def stack(cls, items: Sequence[TextConditioning]) -> TextConditioning:
        """A batch from unbatched entries (e.g. read from the text cache)."""
        if not items:
            raise ValueError("cannot stack an empty list of text conditionings")
        pooled = [item.pooled for item in items]
        if any(p is None for p in pooled) and not all(p is None for p in pooled):
            raise ValueError("cannot stack SD and SDXL text conditionings together")
        hidden = torch.stack([item.hidden for item in items])
        return cls(hidden, None if pooled[0] is None else torch.stack(pooled))

    def expand(self, n: int) -> TextConditioning:
        """``n`` copies of one caption's conditioning (unbatched, or a batch of one) as a batch of ``n``."""

        def repeat(tensor: Tensor, unbatched_ndim: int) -> Tensor:
            if tensor.ndim == unbatched_ndim:
                tensor = tensor.unsqueeze(0)
            if tensor.shape[0] != 1:
                raise ValueError(f"expand needs a single conditioning, got a batch of {tensor.shape[0]}")
            return tensor.repeat(n, *([1] * (tensor.ndim - 1)))

        return TextConditioning(repeat(self.hidden, 2), None if self.pooled is None else repeat(self.pooled, 1))

    def tensors(self) -> dict[str, Tensor]:
        """The tensors by name, for a safetensors cache entry (pooled only when present)."""
        named = {HIDDEN_KEY: self.hidden}
        if self.pooled is not None:
            named[POOLED_KEY] = self.pooled
        return named

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> TextConditioning:
        return cls(tensors[HIDDEN_KEY], tensors.get(POOLED_KEY))


def _token_ids(tokenizer: CLIPTokenizer, captions: list[str], device: torch.device | str) -> Tensor:
    """Pad to the tokenizer's length and truncate, as both SD pipelines and kohya do."""
    tokens = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return tokens.input_ids.to(device)


def encode_captions(model: BaseModel, captions: list[str], device: torch.device | str) -> TextConditioning:
    """Encode a batch of captions; no no_grad here, so a text encoder being trained gets gradients."""
    if model.architecture != "sdxl":
        return TextConditioning(model.text_encoder(_token_ids(model.tokenizer, captions, device))[0])
    first = model.text_encoder(_token_ids(model.tokenizer, captions, device), output_hidden_states=True)
    second = model.text_encoder_2(_token_ids(model.tokenizer_2, captions, device), output_hidden_states=True)
    hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    return TextConditioning(hidden, pooled=second.text_embeds)


def size_time_ids(original_hw: tuple[int, int], crop_top_left: tuple[int, int], target_hw: tuple[int, int]) -> Tensor:
    """SDXL's six size numbers in add_time_ids order: original (h, w), crop (top, left), target (h, w)."""
    return torch.tensor([*original_hw, *crop_top_left, *target_hw], dtype=torch.float32)


def unet_kwargs(cond: TextConditioning, time_ids: Tensor | None) -> dict:
    """Keyword arguments for the U-Net's forward; ``time_ids`` is (6,) for all samples or (batch, 6)."""
    if cond.pooled is None:
        if time_ids is not None:
            raise ValueError("size conditioning (time_ids) is SDXL's; this conditioning has no pooled embedding")
        return {"encoder_hidden_states": cond.hidden}
    if time_ids is None:
        raise ValueError("SDXL conditioning needs time_ids (see size_time_ids)")
    batch = cond.pooled.shape[0]
    time_ids = time_ids.to(device=cond.pooled.device, dtype=cond.pooled.dtype)
    if time_ids.ndim == 1:
        time_ids = time_ids.unsqueeze(0).repeat(batch, 1)
    added = {"text_embeds": cond.pooled, "time_ids": time_ids}
    return {"encoder_hidden_states": cond.hidden, "added_cond_kwargs": added}


def batch_time_ids(records: Sequence, flips: Sequence[bool], augments: Sequence) -> Tensor:
    """(B, 6) size ids of a training batch: each image's original size, crop (after its flip) and bucket."""
    from train.data.augment import crop_top_left, original_size_hw, target_size_hw

    sizes = zip(records, flips, augments, strict=True)
    return torch.stack(
        [size_time_ids(original_size_hw(r), crop_top_left(r, f, a), target_size_hw(r)) for r, f, a in sizes]
    )


@dataclass
class UNetConditioning:
    """What the U-Net is conditioned on for a batch: the text, and for SDXL the size ids (B, 6)."""

    text: TextConditioning
    time_ids: Tensor | None = None

    def expand(self, n: int) -> UNetConditioning:
        """``n`` copies of a single image's conditioning (the validation loss's fixed timesteps)."""
        time_ids = None if self.time_ids is None else self.time_ids.reshape(1, -1).repeat(n, 1)
        return UNetConditioning(self.text.expand(n), time_ids)

    def kwargs(self, device: torch.device, dtype: torch.dtype) -> dict:
        return unet_kwargs(self.text.to(device, dtype), self.time_ids)


__all__ = ["TextConditioning", "UNetConditioning", "batch_time_ids", "encode_captions", "size_time_ids", "unet_kwargs"]
