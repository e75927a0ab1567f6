"""Fixed-seed renders of the live, training model for the evaluation grid.

Each image gets its own CPU generator seeded from (prompt, seed), so its noise
never depends on its batch. Its pixels would still differ in the last bit
between batch sizes: GEMM/conv kernels (oneDNN, cuBLAS, cuDNN) and GroupNorm
pick their algorithms and reduction orders by batch shape. So by default
(``batch_invariant``) each image's U-Net rows and its VAE decode run on their
own and an image is bit-identical at any batch size; batching then only shares
text encoding and the pipeline's per-call work. ``batch_invariant=False`` runs
whole batches through the U-Net: faster, equal up to rounding (<= 1 pixel level in our runs).
Prompts are weighted and may pass 77 tokens (evaluate/prompt_weights.py); their
75-token window count is part of the settings, so a batch never pads a prompt.
A prompt's options win over the config, whose defaults are kohya's.

Rendering leaves training as it found it: global RNG states, train/eval
modes, module devices, LoRA scales and requires_grad flags are restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import torch

from evaluate.pipelines import build_pipeline, encode_prompt, prompt_kwargs
from evaluate.prompt_weights import count_windows
from evaluate.prompts import PromptSpec
from evaluate.render_guards import per_image_unet, preserved_training_state
from evaluate.samplers import make_scheduler
from train.networks.peft_network import peft_strength, tuner_layers

Strength = Callable[[float | None], contextlib.AbstractContextManager]

MIN_SIZE = 64  # kohya's floor for sample images


@dataclass(frozen=True)
class RenderJob:
    prompt_index: int
    prompt: PromptSpec
    seed_index: int
    seed: int  # the generator seed of this image
    multiplier: float | None  # LoRA strength; None = baseline (LoRA off)


@dataclass
class Render:
    job: RenderJob
    image: PIL.Image.Image


def plan_renders(
    prompts: list[PromptSpec], seeds: list[int], multipliers: list[float], baseline: bool
) -> list[RenderJob]:
    """Every (prompt, strength, seed) image, in grid order: per prompt, the baseline row first, then each strength."""
    strengths: list[float | None] = ([None] if baseline else []) + list(dict.fromkeys(multipliers))
    jobs = []
    for prompt_index, prompt in enumerate(prompts):
        for multiplier in strengths:
            for seed_index, seed in enumerate(seeds):
                # A prompt's own --d seeds its columns d, d+1, ... (kohya renders one image at d).
                image_seed = prompt.seed + seed_index if prompt.seed is not None else seed
                jobs.append(RenderJob(prompt_index, prompt, seed_index, image_seed, multiplier))
    return jobs


@dataclass(frozen=True)
class Settings:
    """What a batch must share: one pipeline call renders it."""

    multiplier: float | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    negative_prompt: str
    windows: int  # 75-token windows of the prompt (and of its negative when guided)


def _round_size(pixels: int) -> int:
    return max(MIN_SIZE, pixels - pixels % 8)  # the VAE needs multiples of 8, as kohya rounds


def lora_strength(models: list[torch.nn.Module], multiplier: float | None) -> contextlib.AbstractContextManager:
    """The peft adapters of ``models`` at ``multiplier`` x their trained scale, or off (None)."""
    return peft_strength([layer for model in models for layer in tuner_layers(model).values()], multiplier)


class Renderer:
    """Renders RenderJobs with the trainer's live modules (LoRA included); never reloads from disk."""

    def __init__(
        self,
        *,
        unet,
        vae,
        text_encoder,
        tokenizer,
        scheduler_config,
        device,
        cfg,
        default_size: tuple[int, int],
        dtype=torch.float32,
        batch_invariant: bool | None = None,
        strength: Strength | None = None,
        text_encoder_2=None,
        tokenizer_2=None,
    ):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2  # SDXL's second encoder
        encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
        # How a row's LoRA strength is set: the trained network's own, else any peft adapters found.
        self.strength = strength or (lambda multiplier: lora_strength([self.unet, *encoders], multiplier))
        self.scheduler_config = scheduler_config
        self.device = torch.device(device)
        self.cfg = cfg
        self.default_size = default_size  # (width, height)
        self.dtype = dtype
        # None: the config's batch_invariant if it has one, else on (bit-identical images at any batch size).
        self.batch_invariant = getattr(cfg, "batch_invariant", True) if batch_invariant is None else batch_invariant

    def _count_windows(self, text: str) -> int:
        return count_windows([t for t in (self.tokenizer, self.tokenizer_2) if t is not None], text)

    def _guided(self, guidance_scale: float) -> bool:
        return guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    def settings(self, job: RenderJob) -> Settings:
        spec, cfg = job.prompt, self.cfg
        scale = cfg.guidance_scale if spec.guidance_scale is None else spec.guidance_scale
        negative = cfg.negative_prompt if spec.negative_prompt is None else spec.negative_prompt
        windows = self._count_windows(spec.prompt)
        if self._guided(scale):  # prompt and negative go through the U-Net as one batch: same length
            windows = max(windows, self._count_windows(negative))
        return Settings(
            multiplier=job.multiplier,
            width=_round_size(spec.width or self.default_size[0]),
            height=_round_size(spec.height or self.default_size[1]),
            steps=spec.steps or cfg.num_inference_steps,
            guidance_scale=scale,
            sampler=spec.sampler or cfg.sampler,
            negative_prompt=negative,
            windows=windows,
        )

    def batches(self, jobs: list[RenderJob]) -> list[tuple[Settings, list[int]]]:
        """Indices into ``jobs`` grouped by shared settings (first-seen order), cut into cfg.batch_size batches."""
        groups: dict[Settings, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(self.settings(job), []).append(index)
        size = self.cfg.batch_size
        return [(s, group[i : i + size]) for s, group in groups.items() for i in range(0, len(group), size)]

    @classmethod
    def for_model(
        cls, model, *, device, cfg, default_size, dtype=torch.float32, batch_invariant=None, strength=None
    ) -> Renderer:
        """A renderer over a loaded base model's parts (``train.models.loading.BaseModel``)."""
        return cls(
            unet=model.unet,
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            text_encoder_2=getattr(model, "text_encoder_2", None),
            tokenizer_2=getattr(model, "tokenizer_2", None),
            scheduler_config=model.noise_scheduler.config,
            device=device,
            cfg=cfg,
            default_size=default_size,
            dtype=dtype,
            batch_invariant=batch_invariant,
            strength=strength,
        )

    def render(self, jobs: list[RenderJob]) -> list[Render]:
        """One image per job, returned in the order of ``jobs``."""
        if not jobs:
            return []
        modules = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        if self.text_encoder_2 is not None:
            modules["text_encoder_2"] = self.text_encoder_2
        images: dict[int, PIL.Image.Image] = {}
        with preserved_training_state(modules), torch.no_grad():
            for module in modules.values():
                module.eval()
            # The pipeline runs on its modules' device: bring the VAE and text encoders to the U-Net's.
            for name, module in modules.items():
                if name != "unet":
                    module.to(self.device)
            pipeline = self._pipeline()
            for settings, indices in self.batches(jobs):
                with self.strength(settings.multiplier):
                    rendered = self._render_batch(pipeline, settings, [jobs[i] for i in indices])
                images.update(zip(indices, rendered, strict=True))
        return [Render(job, images[i]) for i, job in enumerate(jobs)]

    def _pipeline(self):
        return build_pipeline(
            unet=self.unet,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            scheduler=make_scheduler(self.cfg.sampler, self.scheduler_config),
        )

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _encode(self, pipeline, settings: Settings, batch: list[RenderJob], guided: bool) -> dict:
        """Prompt (and negative) embeddings, each distinct text encoded once on its own."""
        texts = dict.fromkeys(j.prompt.prompt for j in batch)
        encoded = {text: encode_prompt(pipeline, text, self.device, windows=settings.windows) for text in texts}
        negative = None
        if guided:  # past its own windows a text encodes as the empty prompt, as kohya and A1111 pad
            negative = encode_prompt(pipeline, settings.negative_prompt, self.device, True, settings.windows)
        return prompt_kwargs([encoded[job.prompt.prompt] for job in batch], negative)

    def _render_batch(self, pipeline, settings: Settings, batch: list[RenderJob]) -> list[PIL.Image.Image]:
        # A fresh scheduler per call: multistep samplers keep per-run state.
        pipeline.scheduler = make_scheduler(settings.sampler, self.scheduler_config)
        guided = self._guided(settings.guidance_scale)
        per_image = per_image_unet(self.unet, len(batch)) if self.batch_invariant else contextlib.nullcontext()
        with self._autocast(), per_image:
            latents = pipeline(
                **self._encode(pipeline, settings, batch, guided),
                width=settings.width,
                height=settings.height,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(job.seed) for job in batch],
                output_type="latent",
            ).images
        chunks = latents.split(1) if self.batch_invariant else [latents]
        return [image for chunk in chunks for image in self._decode(pipeline, chunk)]

    def _decode(self, pipeline, latents: torch.Tensor) -> list[PIL.Image.Image]:
        # Decode ourselves, outside autocast: the VAE may stay fp32 while the U-Net runs in bf16/fp16.
        vae = self.vae
        latents = latents.to(vae.device, next(vae.parameters()).dtype) / vae.config.scaling_factor
        pixels = vae.decode(latents, return_dict=False)[0]
        return pipeline.image_processor.postprocess(pixels.float(), output_type="pil")
