"""``python -m evaluate.world_build`` (``make world``): build the world's models, seeded, into paths.world_dir.

In order: the judge (generator labels only), the VAE, the base model's U-Net
and text encoder (the held-out concept never shown), the CLIP, the aesthetic
head. Each part is trained from its own seed on fresh generator images, on the
CPU, and saved in the format its real counterpart ships in (a diffusers
folder, a CLIP folder, LAION's head layout), as fp16 safetensors. ``BUILD.json``
records the settings, times, sizes and each file's sha256; the same settings on
the same torch build and thread count give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from train.atomic import replacing_dir, write_bytes_atomic  # noqa: E402
from train.config import WORLD_DIR  # noqa: E402

log = logging.getLogger("world")
PARTS = ("judge", "vae", "base", "clip", "aesthetic")
BASE_DIR, CLIP_DIR, JUDGE_DIR = "world-sd15", "world-clip", "world-judge"
AESTHETIC_FILE = "aesthetic.safetensors"
VAE_CACHE = ".vae-fp32.safetensors"  # the trained VAE between the vae and base parts (not shipped)


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    judge_steps: int = 1500
    vae_steps: int = 6000
    vae_batch: int = 16
    base_steps: int = 6000
    base_batch: int = 64
    base_pool: int = 40000
    clip_steps: int = 2000
    aesthetic_steps: int = 800


def _progress(every: int):
    def report(name: str, step: int, total: int, info: dict) -> None:
        if step % every == 0 or step == total:
            extra = " ".join(f"{k} {v:.4g}" for k, v in info.items())
            log.info("%s %d/%d %s", name, step, total, extra)

    return report


def _fp16(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(torch.float16)


def build_judge(out: Path, s: BuildSettings) -> None:
    from evaluate.judge import accuracy
    from evaluate.judge_training import train_judge
    from train.data import world

    judge = train_judge(steps=s.judge_steps, batch_size=64, lr=3e-3, seed=s.seed + 1, progress=_progress(100))
    fresh = list(world.scenes(s.seed + 1001, 2000, shapes=world.SHAPES))
    log.info("judge accuracy on 2000 fresh images: %s", accuracy(judge, fresh))
    judge.save(out / JUDGE_DIR)


def build_vae(out: Path, s: BuildSettings) -> None:
    from train.models import world as world_model
    from train.models.world_training import latent_scaling_factor, train_vae

    torch.manual_seed(s.seed + 2)
    vae = train_vae(world_model.make_vae(), steps=s.vae_steps, batch_size=s.vae_batch, lr=2e-3, seed=s.seed + 2,
                    progress=_progress(200))
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, s.seed + 2))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / VAE_CACHE),
              metadata={"scaling_factor": str(vae.config.scaling_factor)})


def build_base(out: Path, s: BuildSettings) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from train.models import world as world_model
    from train.models.world_tokenizer import build_world_tokenizer, write_tokenizer_files
    from train.models.world_training import train_base

    cached = out / VAE_CACHE
    if not cached.is_file():
        raise SystemExit(f"error: {cached} is missing: build the vae part first (--parts vae base)")
    from safetensors import safe_open

    with safe_open(str(cached), "pt") as handle:
        scaling = float(handle.metadata()["scaling_factor"])
    vae = world_model.make_vae(scaling_factor=scaling)
    vae.load_state_dict(load_file(cached))
    vae.eval().requires_grad_(False)
    tokenizer = build_world_tokenizer()
    torch.manual_seed(s.seed + 3)
    unet, text_encoder = world_model.make_unet(), world_model.make_text_encoder(tokenizer)
    unet, text_encoder = train_base(
        unet, text_encoder, tokenizer, vae, world_model.make_scheduler(), steps=s.base_steps,
        batch_size=s.base_batch, lr=1e-3, seed=s.seed + 3, pool_size=s.base_pool, progress=_progress(200),
    )
    pipeline = StableDiffusionPipeline(
        vae=_fp16(vae), text_encoder=_fp16(text_encoder), tokenizer=tokenizer, unet=_fp16(unet),
        scheduler=world_model.make_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    with replacing_dir(out / BASE_DIR) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        write_tokenizer_files(tmp / "tokenizer")  # the same files, written by the tokenizer's own builder


def build_clip(out: Path, s: BuildSettings) -> None:
    from evaluate.world_clip import make_clip, make_processor, train_clip
    from train.models.world_tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    torch.manual_seed(s.seed + 4)
    clip = train_clip(make_clip(tokenizer), tokenizer, steps=s.clip_steps, batch_size=128, lr=2e-3,
                      seed=s.seed + 4, progress=_progress(200))
    aesthetic = None
    existing = out / CLIP_DIR / AESTHETIC_FILE
    if existing.is_file():
        aesthetic = existing.read_bytes()  # kept only if the aesthetic part is not rebuilt after this
    with replacing_dir(out / CLIP_DIR) as tmp:
        _fp16(clip).save_pretrained(tmp, safe_serialization=True)
        make_processor(tokenizer).save_pretrained(tmp)
        if aesthetic is not None:
            (tmp / AESTHETIC_FILE).write_bytes(aesthetic)


def build_aesthetic(out: Path, s: BuildSettings) -> None:
    from transformers import CLIPModel

    from evaluate.world_aesthetic import train_aesthetic

    clip = CLIPModel.from_pretrained(out / CLIP_DIR, local_files_only=True, dtype=torch.float32).eval()
    head = train_aesthetic(clip, steps=s.aesthetic_steps, batch_size=128, lr=1e-3, seed=s.seed + 5,
                           progress=_progress(100))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in head.state_dict().items()}
    target = out / CLIP_DIR / AESTHETIC_FILE
    tmp = target.with_name(f".{target.name}.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, target)


BUILDERS = {"judge": build_judge, "vae": build_vae, "base": build_base, "clip": build_clip,
            "aesthetic": build_aesthetic}


def _manifest(out: Path, s: BuildSettings, seconds: dict[str, float]) -> dict:
    files = sorted(p for d in (BASE_DIR, CLIP_DIR, JUDGE_DIR) for p in (out / d).rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    previous = {}
    if (out / "BUILD.json").is_file():
        previous = json.loads((out / "BUILD.json").read_text(encoding="utf-8")).get("seconds", {})
    return {
        "settings": asdict(s),
        "seconds": {**previous, **seconds},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "bytes": sum(p.stat().st_size for p in files),
        "files": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }


def build(out: Path, parts: list[str], settings: BuildSettings) -> dict:
    manifest = {}
    for part in PARTS:
        if part in parts:
            started = time.time()
            log.info("building %s", part)
            BUILDERS[part](out, settings)
            seconds = round(time.time() - started, 1)
            log.info("%s built in %.0f s", part, seconds)
            # After each part, so that a build stopped later still records what it finished.
            manifest = _manifest(out, settings, {part: seconds})
            write_bytes_atomic(out / "BUILD.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluate.world_build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(WORLD_DIR), help="where the models go (paths.world_dir)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="rebuild only these")
    for name, default in asdict(BuildSettings()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = BuildSettings(**{name: getattr(args, name) for name in asdict(BuildSettings())})
    manifest = build(args.out, args.parts, settings)
    log.info("world built in %s: %.1f MB in %d files; seconds %s", args.out, manifest["bytes"] / 1e6,
             len(manifest["files"]), manifest["seconds"])


if __name__ == "__main__":
    main()
