"""Evaluation rendering throughput, side by side in one run.

Every row renders the same jobs (2 prompts x N seeds, LoRA on) through
``evaluate.render.Renderer``: one image per call (batch 1) against batches of 4
and 8, both batch-invariant (the default: bit-identical images at any batch
size) and fast (whole batches through the U-Net). "max diff" is the largest
pixel difference (0-255) from the batch-1 images of the same model.

CPU rows: the tiny model, 64 px. GPU rows (when CUDA is present): the tiny
model again, then the full-size SD1.5 architecture with random weights at
512 px, bf16, 20 steps.

    python bench/eval_throughput.py [--steps 20] [--seeds 8] [--gpu-seeds 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evaluate.config import EvaluateConfig  # noqa: E402
from evaluate.prompts import PromptSpec  # noqa: E402
from evaluate.render import Renderer, plan_renders  # noqa: E402
from train.config import ModelConfig, NetworkConfig  # noqa: E402
from train.models.loading import load_base_model  # noqa: E402
from train.models.tiny import build_tiny_sd15  # noqa: E402
from train.networks import NetworkTargets, build_network  # noqa: E402

PROMPTS = [PromptSpec("red circle, blue background, shape"), PromptSpec("green square, yellow background")]
# (batch size, batch-invariant); batch 1 is the same either way.
VARIANTS = [(1, True), (4, True), (8, True), (4, False), (8, False)]


def load_for_eval(path: Path, device: torch.device, dtype: torch.dtype):
    """The model as the trainer holds it: U-Net and text encoder in ``dtype`` with a LoRA, VAE fp32."""
    model = load_base_model(ModelConfig(path=str(path)))
    cast = {} if dtype == torch.float32 else {"dtype": dtype}
    model.unet.to(device, **cast)
    model.text_encoder.to(device, **cast)
    model.vae.to(device)
    build_network(NetworkConfig()).apply(NetworkTargets(model.unet), seed=0)
    return model


def time_variant(model, device, dtype, size, steps, seeds, batch, invariant) -> tuple[float, list[np.ndarray]]:
    cfg = EvaluateConfig(num_inference_steps=steps, batch_size=batch, guidance_scale=7.0, sampler="euler_a")
    renderer = Renderer.for_model(
        model, device=device, cfg=cfg, default_size=(size, size), dtype=dtype, batch_invariant=invariant
    )
    jobs = plan_renders(PROMPTS, list(range(seeds)), [1.0], baseline=False)
    renderer.render(jobs[:batch])  # warm-up: kernels, allocator, first-call setup
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    renders = renderer.render(jobs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(jobs) / (time.perf_counter() - start), [np.asarray(r.image).astype(np.int16) for r in renders]


def model_rows(name: str, model, device, dtype, size: int, steps: int, seeds: int) -> list[dict]:
    rows, reference = [], None
    for batch, invariant in VARIANTS:
        images_s, images = time_variant(model, device, dtype, size, steps, seeds, batch, invariant)
        reference = reference or images
        diff = max(int(np.abs(a - b).max()) for a, b in zip(images, reference, strict=True))
        mode = "-" if batch == 1 else ("invariant" if invariant else "fast")
        rows.append(
            {"model": name, "batch": batch, "mode": mode, "images": len(images), "images_s": images_s, "diff": diff}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=8, help="seeds per prompt on the tiny model")
    parser.add_argument("--gpu-seeds", type=int, default=4, help="seeds per prompt on full-size SD1.5")
    parser.add_argument(
        "--full-size-on-cpu", action="store_true", help="smoke-run the full-size rows on CPU (128 px, 2 steps)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cpu, f32 = torch.device("cpu"), torch.float32
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = build_tiny_sd15(work / "tiny")
        rows += model_rows("tiny, 64 px, CPU fp32", load_for_eval(tiny, cpu, f32), cpu, f32, 64, args.steps, args.seeds)
        if torch.cuda.is_available() or args.full_size_on_cpu:
            from bench.sd15_random import build_random_sd15

            sd15 = build_random_sd15(work / "sd15-random")
        if torch.cuda.is_available():
            gpu, bf16 = torch.device("cuda"), torch.bfloat16
            rows += model_rows(
                "tiny, 64 px, CUDA fp32", load_for_eval(tiny, gpu, f32), gpu, f32, 64, args.steps, args.seeds
            )
            model = load_for_eval(sd15, gpu, bf16)
            rows += model_rows("SD1.5, 512 px, CUDA bf16", model, gpu, bf16, 512, args.steps, args.gpu_seeds)
        elif args.full_size_on_cpu:
            rows += model_rows("SD1.5, 128 px, CPU fp32 (smoke)", load_for_eval(sd15, cpu, f32), cpu, f32, 128, 2, 2)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    table = Table(
        title=f"Evaluation render throughput, euler_a, {args.steps} steps, CFG 7 (torch {torch.__version__}, {device})"
    )
    for col in ("model", "images", "batch", "mode", "images/s", "vs batch 1", "max diff vs batch 1"):
        table.add_column(col, justify="left" if col in ("model", "mode") else "right")
    base = {}
    for r in rows:
        base.setdefault(r["model"], r["images_s"])
        table.add_row(
            r["model"],
            str(r["images"]),
            str(r["batch"]),
            r["mode"],
            f"{r['images_s']:.2f}",
            f"{r['images_s'] / base[r['model']]:.2f}x",
            str(r["diff"]),
        )
    Console(width=140).print(table)
    if not torch.cuda.is_available():
        print("No CUDA device: the GPU rows (tiny on CUDA, full-size SD1.5 at 512 px bf16) run only on a GPU machine.")


if __name__ == "__main__":
    main()
