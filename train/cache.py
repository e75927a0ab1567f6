"""On-disk caches of VAE latents and frozen text-encoder outputs.

Entries are keyed by content, not by path: the image bytes, the VAE identity,
the bucket and the flip for latents; the text encoder identity and the exact
caption for embeddings. A second run on the same data encodes nothing, and a
changed image, VAE or bucket can never be served a stale entry. Files are
written atomically, so a killed run leaves no half-written entry.

Latents store the VAE posterior's mean and std (unscaled), which serves all
three latent-sampling modes cheaply: ``deterministic`` uses the mean, ``once``
draws one sample with a generator seeded from the entry's key (the same draw
every epoch and every run), ``random`` draws a fresh sample from the training
generator each time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train.atomic import atomic_path
from train.models.conditioning import TextConditioning

CACHE_FORMAT = "v1"  # text entries hold "hidden" (and SDXL's "pooled"), as TextConditioning.tensors()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in (CACHE_FORMAT, *parts)).encode()).hexdigest()


def _entry_path(root: Path, key: str) -> Path:
    return root / key[:2] / f"{key}.safetensors"


class LatentCache:
    """VAE posterior statistics per (image content, VAE, bucket, flip)."""

    def __init__(
        self,
        root: Path,
        vae: torch.nn.Module,
        vae_identity: str,
        image_loader: Callable[[object, bool], torch.Tensor],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ):
        self.root = Path(root)
        self.vae = vae
        self.vae_identity = vae_identity
        self.image_loader = image_loader
        self.device = device
        self.dtype = dtype
        self.encode_count = 0
        self._digests: dict[Path, str] = {}

    def key(self, record, flip: bool) -> str:
        if record.path not in self._digests:
            self._digests[record.path] = file_digest(record.path)
        return _key("latent", self._digests[record.path], self.vae_identity, record.bucket, record.resized_size, flip)

    def prepare(self, items: Iterable[tuple[object, bool]], batch_size: int = 4, progress=None) -> int:
        """Encode every (record, flip) not cached yet, batched per bucket; returns the number encoded."""
        missing: dict[tuple, list[tuple[object, bool, str]]] = {}
        for record, flip in items:
            key = self.key(record, flip)
            if _entry_path(self.root, key).exists():
                continue
            missing.setdefault(tuple(record.bucket), []).append((record, flip, key))
        encoded = 0
        for group in missing.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                mean, std = self._encode([self.image_loader(r, f) for r, f, _ in chunk])
                for i, (_, _, key) in enumerate(chunk):
                    self._store(key, mean[i], std[i])
                encoded += len(chunk)
                if progress is not None:
                    progress(len(chunk))
        return encoded

    def get(self, record, flip: bool, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latent (C, h, w) for the record, drawn according to ``mode``."""
        key = self.key(record, flip)
        tensors = load_file(str(_entry_path(self.root, key)))
        return draw_latent(tensors["mean"], tensors["std"], mode, key, generator)

    def encode_uncached(self, items: Sequence[tuple], mode: str, generator: torch.Generator | None):
        """Encode a batch now, without touching the cache (the uncached training path).

        ``items`` are (record, flip) or (record, flip, augmentation): per-step augmentations
        (random crop, colour) are applied by the image loader before encoding.
        """
        mean, std = self._encode([self.image_loader(*item) for item in items])
        return torch.stack(
            [draw_latent(mean[i], std[i], mode, self.key(item[0], item[1]), generator) for i, item in enumerate(items)]
        )

    def _encode(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack(list(images)).to(self.device, self.dtype)
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
        self.encode_count += len(images)
        return dist.mean.float().cpu(), dist.std.float().cpu()

    def _store(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        with atomic_path(_entry_path(self.root, key)) as tmp:
            save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp))


def draw_latent(mean, std, mode: str, key: str, generator: torch.Generator | None) -> torch.Tensor:
    if mode == "deterministic":
        return mean
    if mode == "once":
        # Seeded from the entry's key: the same draw every epoch and every run.
        generator = torch.Generator("cpu").manual_seed(int(key[:15], 16))
    noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=mean.dtype)
    return mean + std * noise.to(mean.device)


class TextEmbeddingCache:
    """Frozen text-encoder outputs per exact caption string (SDXL: hidden states and pooled embedding)."""

    def __init__(self, root: Path, encoder_identity: str, encode: Callable[[list[str]], TextConditioning]):
        self.root = Path(root)
        self.encoder_identity = encoder_identity
        self.encode = encode
        self.encode_count = 0
        self._memory: dict[str, TextConditioning] = {}

    def key(self, caption: str) -> str:
        return _key("text", self.encoder_identity, caption)

    def prepare(self, captions: Iterable[str], batch_size: int = 16) -> int:
        missing = sorted({c for c in captions if not _entry_path(self.root, self.key(c)).exists()})
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            with torch.no_grad():
                encoded = self.encode(chunk).to("cpu", torch.float32)
            self.encode_count += len(chunk)
            for index, caption in enumerate(chunk):
                entry = {name: tensor[index].contiguous() for name, tensor in encoded.tensors().items()}
                with atomic_path(_entry_path(self.root, self.key(caption))) as tmp:
                    save_file(entry, str(tmp))
        return len(missing)

    def get(self, caption: str) -> TextConditioning:
        key = self.key(caption)
        if key not in self._memory:
            self._memory[key] = TextConditioning.from_tensors(load_file(str(_entry_path(self.root, key))))
        return self._memory[key]
