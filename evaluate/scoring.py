"""The scorer: one CLIP image forward per image serves CLIP-T, CLIP-I and the aesthetic score.

Models are passed in (``build_scorer`` picks them from an ``EvaluateConfig``); the
math lives in clip_scores.py / aesthetic.py. Training-image embeddings for CLIP-I
are computed once per (CLIP model, image content) and cached on disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from evaluate.aesthetic import AestheticHead, aesthetic_scores, load_aesthetic_head
from evaluate.clip_scores import CLIPEmbedder, clip_i_scores, clip_t_scores
from evaluate.config import EvaluateConfig
from evaluate.demo_models import AESTHETIC_FILE, DEMO_DIR_KEY, build_demo_clip
from train.atomic import atomic_path
from train.data.images import to_rgb_on_white
from train.errors import ConfigError, DatasetError

REFERENCE_CHUNK = 64


@dataclass
class ImageScores:
    clip_t: float
    clip_i: float | None
    aesthetic: float | None


class Scorer:
    def __init__(
        self,
        embedder: CLIPEmbedder,
        aesthetic_head: AestheticHead | None = None,
        reference_embeds: Tensor | None = None,
        demo_weights: bool = False,
    ):
        self.embedder = embedder
        self.aesthetic_head = aesthetic_head
        has_references = reference_embeds is not None and reference_embeds.shape[0] > 0
        self.reference_embeds = reference_embeds if has_references else None
        # True when CLIP/head are the locally built demo weights: their scores are noise.
        self.demo_weights = demo_weights
        # Prompts repeat across seeds and checkpoints; their embeddings never change.
        self._text_embeds: dict[str, Tensor] = {}

    def available_metrics(self) -> set[str]:
        metrics = {"clip_t"}
        if self.reference_embeds is not None:
            metrics.add("clip_i")
        if self.aesthetic_head is not None:
            metrics.add("aesthetic")
        return metrics

    def _embed_prompts(self, prompts: list[str]) -> Tensor:
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_embeds]
        if new:
            self._text_embeds.update(zip(new, self.embedder.embed_texts(new), strict=True))
        return torch.stack([self._text_embeds[p] for p in prompts])

    def score(self, images: list[Image.Image], prompts: list[str]) -> tuple[list[ImageScores], dict[str, float]]:
        """Per-image scores and their means (keys only for the scores this scorer has)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return [], {}
        image_embeds = self.embedder.embed_images(images)
        columns = {"clip_t": clip_t_scores(image_embeds, self._embed_prompts(prompts))}
        if self.reference_embeds is not None:
            columns["clip_i"] = clip_i_scores(image_embeds, self.reference_embeds)
        if self.aesthetic_head is not None:
            columns["aesthetic"] = aesthetic_scores(self.aesthetic_head, image_embeds)
        lists = {name: values.tolist() for name, values in columns.items()}
        per_image = [
            ImageScores(
                clip_t=lists["clip_t"][i],
                clip_i=lists["clip_i"][i] if "clip_i" in lists else None,
                aesthetic=lists["aesthetic"][i] if "aesthetic" in lists else None,
            )
            for i in range(len(images))
        ]
        return per_image, {name: float(values.mean()) for name, values in columns.items()}


def _image_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise DatasetError([f"{path}: cannot read ({exc.strerror or exc})"], "CLIP-I reference images") from None


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return to_rgb_on_white(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError([f"{path}: not a readable image ({exc})"], "CLIP-I reference images") from None


def _read_cache(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(file) if file.is_file() else {}
    except (SafetensorError, OSError, ValueError):
        return {}  # a damaged cache is only a lost speed-up: recompute


def reference_embeddings(embedder: CLIPEmbedder, image_paths: list[Path], cache_dir: Path) -> Tensor:
    """Training-image embeddings, one row per path, cached by (CLIP identity, image sha256).

    Only images not yet in the cache go through CLIP (``embedder.images_embedded`` counts them).
    """
    paths = [Path(p) for p in image_paths]
    if not paths:
        return torch.zeros(0, embedder.embed_dim)
    digests = [_image_sha256(p) for p in paths]
    cache_file = Path(cache_dir) / f"clip-reference-{embedder.identity}.safetensors"
    cached = _read_cache(cache_file)
    todo = {d: p for d, p in zip(digests, paths, strict=True) if d not in cached}
    if todo:
        items = list(todo.items())
        # Open a chunk at a time: a large dataset never sits in memory as decoded images.
        for start in range(0, len(items), REFERENCE_CHUNK):
            chunk = items[start : start + REFERENCE_CHUNK]
            embeds = embedder.embed_images([_open_rgb(p) for _, p in chunk])
            cached.update({d: e.contiguous() for (d, _), e in zip(chunk, embeds, strict=True)})
        try:
            with atomic_path(cache_file) as tmp:
                save_file(cached, str(tmp), metadata={"clip_identity": embedder.identity})
        except OSError:
            pass  # a read-only or full cache dir only costs recomputation next time
    return torch.stack([cached[d] for d in digests]).float()


def build_scorer(
    cfg: EvaluateConfig,
    reference_image_paths: list[Path] | None,
    cache_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
) -> Scorer:
    """The scorer an ``EvaluateConfig`` asks for: a user CLIP (clip_path) or the demo one."""
    demo_folder = None
    if cfg.clip_path:
        embedder = CLIPEmbedder.from_path(cfg.clip_path, device)
    elif cfg.build_demo_clip:
        demo_folder = build_demo_clip(Path(cfg.demo_clip_dir))
        embedder = CLIPEmbedder.from_path(demo_folder, device, key=DEMO_DIR_KEY)
    else:
        raise ConfigError(
            "evaluate.clip_path: scoring needs a CLIP model; set evaluate.clip_path to a local CLIP folder "
            "or evaluate.build_demo_clip=true for a tiny random one"
        )
    head = None
    if cfg.aesthetic_path:
        head = load_aesthetic_head(cfg.aesthetic_path, input_dim=embedder.embed_dim)
    elif demo_folder is not None:
        head = load_aesthetic_head(demo_folder / AESTHETIC_FILE, input_dim=embedder.embed_dim)
    references = None
    if reference_image_paths:
        references = reference_embeddings(embedder, list(reference_image_paths), Path(cache_dir))
    return Scorer(embedder, head, references, demo_weights=demo_folder is not None)
