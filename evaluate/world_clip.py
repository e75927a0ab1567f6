"""The world's CLIP: image and text towers trained contrastively on the world, saved as a real CLIP folder.

A ``CLIPModel`` (ViT image tower on the 64 px images, CLIP BPE text tower),
with its ``CLIPProcessor``, saved by ``save_pretrained`` and read back by
``CLIPEmbedder.from_path`` exactly as a downloaded openai/clip-vit-* folder is.
Unlike the base model it sees every shape of the world, the star included, and
its word: like OpenAI's CLIP, it knows more than the model it judges. It never
sees the concept token, as real CLIP has never seen a user's ``sks``.

Captions repeat (a red circle on a grey background is one caption for many
images, and "a red circle" fits it too), so the contrastive targets spread
over every pair in the batch whose caption fits the image, instead of calling
a true pair a negative.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer  # noqa: E402

from evaluate.world_degrade import DEGRADATIONS, WORDS  # noqa: E402
from train.data import world  # noqa: E402
from train.models.fitting import Fitting, Progress  # noqa: E402
from train.models.world_tokenizer import MAX_TOKENS  # noqa: E402

try:  # transformers 5 without torchvision; the explicit class also silences the fallback warning
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as _ImageProcessor
except ImportError:  # transformers 4.x
    from transformers import CLIPImageProcessor as _ImageProcessor

PATCH_SIZE = 8
HIDDEN_SIZE = 64
PROJECTION_DIM = 64
# OpenAI CLIP's normalisation, which the saved processor applies at evaluation time.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def make_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    common = {"hidden_size": HIDDEN_SIZE, "intermediate_size": 4 * HIDDEN_SIZE, "num_hidden_layers": 3,
              "num_attention_heads": 4}
    text = {**common, "vocab_size": len(tokenizer), "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    vision = {**common, "image_size": world.SIZE, "patch_size": PATCH_SIZE}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM))


def make_processor(tokenizer: CLIPTokenizer) -> CLIPProcessor:
    image_processor = _ImageProcessor(
        size={"shortest_edge": world.SIZE}, crop_size={"height": world.SIZE, "width": world.SIZE},
        image_mean=list(MEAN), image_std=list(STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def normalise(x: Tensor) -> Tensor:
    """[0, 1] pixels as the processor hands them to the image tower."""
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def contrastive_loss(image: Tensor, text: Tensor, fits: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE whose targets are uniform over every true pair: ``fits[i, j]`` when caption j
    describes image i (its own, and any other caption that names only what image i shows)."""
    logits = logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    fits = fits.float()
    per_image = fits / fits.sum(dim=1, keepdim=True)
    per_text = fits.T / fits.T.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, per_image) + F.cross_entropy(logits.T, per_text))


def describes(caption: str, scene: world.Scene, flaw: str | None = None) -> bool:
    """Whether the caption names nothing the image does not show: its labels, and its flaw (a
    degradation's word, or none for a clean image)."""
    said = world.read_prompt(caption)
    named = next((w for w in WORDS if w in caption.split(", ")[-1:]), None)
    return named == flaw and all(getattr(said, k) in (None, getattr(scene, k)) for k in ("shape", "colour", "background"))


def _batch(scenes, words: random.Random, g: torch.Generator, flawed: float) -> tuple[Tensor, list[str], list]:
    """Images in [0, 1] and their captions; a ``flawed`` share spoilt by a degradation its caption names."""
    pixels = torch.from_numpy(world.to_array([world.render(s) for s in scenes]))
    captions, flaws = [world.describe(s, words) for s in scenes], []
    for i in range(len(scenes)):
        flaw = words.choice(WORDS) if words.random() < flawed else None
        if flaw is not None:
            severity = 0.35 + 0.65 * words.random()
            pixels[i] = DEGRADATIONS[flaw](pixels[i : i + 1], severity, g).clamp(0, 1)[0]
            captions[i] = f"{captions[i]}, {flaw}"
        flaws.append(flaw)
    return pixels, captions, flaws


def train_clip(model: CLIPModel, tokenizer: CLIPTokenizer, *, steps: int, batch_size: int, lr: float, seed: int,
               flawed: float = 0.3, progress: Progress | None = None) -> CLIPModel:
    """Contrastive training on fresh scenes; a ``flawed`` share degraded and captioned with the flaw's word,
    so that the embedding carries image quality, as real CLIP's does."""
    torch.manual_seed(seed)
    scenes = world.scenes(seed, shapes=world.SHAPES)
    words = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    fitting = Fitting("clip", optimizer, schedule, steps, clip_params=model.parameters(), progress=progress)
    for step in range(steps):
        batch = [next(scenes) for _ in range(batch_size)]
        pixels, captions, flaws = _batch(batch, words, g, flawed)
        pixels = normalise(pixels)
        tokens = tokenizer(captions, padding=True, return_tensors="pt")
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        image, text = (getattr(f, "pooler_output", f) for f in (image, text))
        fits = torch.tensor([[describes(c, scene, flaw) for c in captions] for scene, flaw in zip(batch, flaws, strict=True)])
        fitting.step(step, contrastive_loss(image, text, fits, model.logit_scale))
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap: a temperature of 1/100
    return model.eval().requires_grad_(False)
