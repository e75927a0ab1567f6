"""A tiny CLIP model and aesthetic head with random weights, built locally.

They exist so the evaluation pipeline (render -> CLIP-T/CLIP-I/aesthetic -> logs)
runs end to end without downloads. Their scores are noise: the scorer marks them
``demo_weights`` and the logs say so. They are saved to disk and read back only
through ``CLIPEmbedder.from_path`` / ``load_aesthetic_head``, the path real weights take.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPProcessor  # noqa: E402

from evaluate.aesthetic import AestheticHead  # noqa: E402
from evaluate.model_files import clip_folder_problems  # noqa: E402
from train.atomic import atomic_dir  # noqa: E402
from train.errors import ModelLoadError  # noqa: E402
from train.models.tiny import MAX_TOKENS, build_tiny_tokenizer  # noqa: E402

try:  # transformers 5 without torchvision; the explicit class also silences the fallback warning
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as _ImageProcessor
except ImportError:  # transformers 4.x
    from transformers import CLIPImageProcessor as _ImageProcessor

DEMO_DIR_KEY = "evaluate.demo_clip_dir"
AESTHETIC_FILE = "aesthetic.safetensors"
IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN_SIZE = 32
PROJECTION_DIM = 32


def _clip_config(tokenizer) -> CLIPConfig:
    common = {"hidden_size": HIDDEN_SIZE, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    text = {
        **common,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": MAX_TOKENS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**common, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM)


def demo_folder_problems(folder: Path) -> list[str]:
    problems = clip_folder_problems(folder)
    if not (folder / AESTHETIC_FILE).is_file():
        problems.append(f"{AESTHETIC_FILE} (the demo aesthetic head)")
    return problems


def build_demo_clip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save the tiny CLIP (model + processor) and aesthetic head in ``folder`` unless already there."""
    target = Path(folder).expanduser()
    if target.exists():
        if target.is_dir() and not demo_folder_problems(target):
            return target
        # Never overwrite what is there: it may be the user's own files.
        raise ModelLoadError(
            f"{DEMO_DIR_KEY}: {target} exists but is not a demo CLIP folder; delete it or choose another path"
        )
    tokenizer = build_tiny_tokenizer()
    image_processor = _ImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    # fork_rng keeps the caller's global RNG untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(_clip_config(tokenizer)).eval()
        head = AestheticHead(PROJECTION_DIM).eval()
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / AESTHETIC_FILE))
    return target
