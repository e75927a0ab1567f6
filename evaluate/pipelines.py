"""The diffusers pipeline a Renderer drives, SD 1.x/2.x or SDXL, and its prompt embeddings.

Prompts are encoded one distinct text at a time, with A1111/kohya weighting and
75-token windows (evaluate/prompt_weights.py), from the same layers the pipeline's
own ``encode_prompt`` takes: plain text under 76 tokens encodes exactly as it does.
A batch's prompts and negative share one window count, chosen by the caller from the
prompts' settings alone, so a prompt's embedding never depends on the batch it is in.
SDXL adds a pooled embedding per prompt; an empty negative prompt is all zeros,
as SDXL's pipeline does by default (``force_zeros_for_empty_prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from evaluate.prompt_weights import count_windows, encode_weighted


@dataclass(frozen=True)
class PromptEmbeds:
    embeds: torch.Tensor  # (1, tokens, width)
    pooled: torch.Tensor | None = None  # SDXL: (1, width)


def build_pipeline(*, unet, vae, text_encoder, tokenizer, scheduler, text_encoder_2=None, tokenizer_2=None):
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}
    if text_encoder_2 is None:
        no_checker = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        pipeline = StableDiffusionPipeline(**parts, **no_checker)
    else:
        sdxl = {"text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2, "add_watermarker": False}
        pipeline = StableDiffusionXLPipeline(**parts, **sdxl)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def is_sdxl(pipeline: DiffusionPipeline) -> bool:
    return isinstance(pipeline, StableDiffusionXLPipeline)


def encode_prompt(
    pipeline: DiffusionPipeline, text: str, device: torch.device, negative: bool = False, windows: int | None = None
) -> PromptEmbeds:
    """``text``'s embeddings over ``windows`` 75-token windows (None: as many as it needs)."""
    tokenizers = [t for t in (pipeline.tokenizer, getattr(pipeline, "tokenizer_2", None)) if t is not None]
    windows = windows or count_windows(tokenizers, text)
    if not is_sdxl(pipeline):
        embeds, _ = encode_weighted(pipeline.tokenizer, pipeline.text_encoder, text, device, windows)
        return PromptEmbeds(embeds.to(pipeline.text_encoder.dtype))
    # Both SDXL encoders give their penultimate layer; the second also gives the pooled embedding.
    first, _ = encode_weighted(pipeline.tokenizer, pipeline.text_encoder, text, device, windows, hidden_layer=-2)
    second, pooled = encode_weighted(
        pipeline.tokenizer_2, pipeline.text_encoder_2, text, device, windows, hidden_layer=-2
    )
    embeds = torch.cat([first, second], dim=-1).to(pipeline.text_encoder_2.dtype)
    pooled = pooled.to(pipeline.text_encoder_2.dtype)
    if negative and not text and pipeline.config.force_zeros_for_empty_prompt:
        return PromptEmbeds(torch.zeros_like(embeds), torch.zeros_like(pooled))
    return PromptEmbeds(embeds, pooled)


def prompt_kwargs(positive: list[PromptEmbeds], negative: PromptEmbeds | None) -> dict:
    """The pipeline call's embedding arguments for a batch (negative None: no guidance)."""
    embeds = torch.cat([p.embeds for p in positive])
    kwargs = {"prompt_embeds": embeds, "negative_prompt_embeds": None}
    if negative is not None:
        kwargs["negative_prompt_embeds"] = negative.embeds.expand_as(embeds)
    if positive[0].pooled is not None:
        pooled = torch.cat([p.pooled for p in positive])
        kwargs["pooled_prompt_embeds"] = pooled
        kwargs["negative_pooled_prompt_embeds"] = None if negative is None else negative.pooled.expand_as(pooled)
    return kwargs
