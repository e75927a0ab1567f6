"""CLIP-T and CLIP-I: pure functions over embeddings, plus a thin CLIP model wrapper.

The math matches torchmetrics' ``clip_score``: cosine of L2-normalised projected
features (torchmetrics reports 100 x that and clamps the mean at 0; we keep the
raw cosine so a mean over many images is not biased by the clamp). The wrapper
preprocesses with the CLIP processor saved beside the weights, as torchmetrics does.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
from functools import cached_property  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402
from transformers import AutoProcessor, CLIPModel  # noqa: E402

from evaluate.model_files import clip_folder_problems  # noqa: E402
from train.data.images import to_rgb_on_white  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402

CLIP_PATH_KEY = "evaluate.clip_path"
# Config fields that change with the saving library, not with the model.
_VOLATILE_KEYS = frozenset({"transformers_version", "dtype", "torch_dtype", "architectures"})


def l2_normalize(x: Tensor) -> Tensor:
    """Unit rows along the last dim (a zero row stays zero instead of NaN)."""
    return F.normalize(x, p=2, dim=-1)


def clip_t_scores(image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """Cosine between paired rows: image i against the prompt it was rendered from."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"paired embeddings differ in shape: {tuple(image_embeds.shape)} vs {tuple(text_embeds.shape)}"
        )
    return (l2_normalize(image_embeds) * l2_normalize(text_embeds)).sum(dim=-1)


def clip_i_scores(image_embeds: Tensor, reference_embeds: Tensor) -> Tensor:
    """Per image, the mean cosine to every reference (training) image."""
    if reference_embeds.ndim != 2 or reference_embeds.shape[0] == 0:
        raise ValueError("clip_i_scores needs at least one reference embedding")
    return (l2_normalize(image_embeds) @ l2_normalize(reference_embeds).T).mean(dim=-1)


def _features(output) -> Tensor:
    # transformers 5 returns a ModelOutput with the projection in pooler_output; 4.x a tensor.
    return output if isinstance(output, Tensor) else output.pooler_output


def _stable_config(value):
    """A config dict without fields that vary with the library version or how it was saved."""
    if isinstance(value, dict):
        return {
            k: _stable_config(v) for k, v in value.items() if not str(k).startswith("_") and k not in _VOLATILE_KEYS
        }
    return value


class CLIPEmbedder:
    """Projected CLIP image and text features; the model and processor are passed in."""

    def __init__(self, model: CLIPModel, processor, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        self.processor = processor
        # Images pushed through the vision tower so far; caching tests read it.
        self.images_embedded = 0

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str | torch.device = "cpu", key: str = CLIP_PATH_KEY):
        """Load a local folder holding a CLIPModel and its processor; every fixable problem is a ModelLoadError."""
        folder = Path(path).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise ModelLoadError(f"{key}: {folder} {what}; give a local folder with a CLIP model and its processor")
        problems = clip_folder_problems(folder)
        if problems:
            raise ModelLoadError(f"{key}: {folder} is not a complete CLIP folder; missing " + "; ".join(problems))
        try:
            model, info = CLIPModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ModelLoadError(f"{key}: cannot load the CLIP model in {folder}: {exc}") from None
        # from_pretrained fills missing tensors with random values; that would score silently wrong.
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
        if missing:
            shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModelLoadError(f"{key}: the weights in {folder} lack {len(missing)} tensors ({shown})")
        if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ModelLoadError(f"{key}: {folder} has no CLIP processor (image processor + tokenizer)")
        return cls(model, processor, device)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_length(self) -> int:
        limit = int(self.model.config.text_config.max_position_embeddings)
        return min(limit, int(getattr(self.processor.tokenizer, "model_max_length", limit)))

    @cached_property
    def identity(self) -> str:
        """Short hash of config, preprocessing and weights: keys cached reference embeddings."""
        hasher = hashlib.sha256()
        image_processor = self.processor.image_processor
        preprocessing = {"class": type(image_processor).__name__, **_stable_config(image_processor.to_dict())}
        hasher.update(json.dumps(_stable_config(self.model.config.to_dict()), sort_keys=True, default=str).encode())
        hasher.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            hasher.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
        return hasher.hexdigest()[:16]

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image], batch_size: int = 16) -> Tensor:
        """Projected image features (unnormalised, float32, cpu): one vision forward per image."""
        if not images:
            return torch.zeros(0, self.embed_dim)
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = [to_rgb_on_white(image) for image in images[start : start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels.to(self.device))).float().cpu())
            self.images_embedded += len(batch)
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """Projected text features (unnormalised, float32, cpu), prompts cut to the model's length.

        torchmetrics slices over-long token rows, which drops the end-of-text token the text
        tower pools at; the tokenizer's own truncation keeps it, and equals torchmetrics otherwise.
        """
        if not texts:
            return torch.zeros(0, self.embed_dim)
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.processor.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            )
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
            chunks.append(_features(output).float().cpu())
        return torch.cat(chunks)
