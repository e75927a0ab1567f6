"""Training throughput, side by side in one run.

CPU rows: the tiny model, uncached data (VAE and text encoder run every step)
vs cached latents and text embeddings. GPU rows (when CUDA is present): the
full-size SD1.5 architecture with random weights at 512 px, bf16, AdamW8bit,
batch 1 and 4: it/s, peak VRAM and achieved TFLOP/s (FLOPs of one training
step counted by torch's FlopCounterMode).

    python bench/train_throughput.py [--steps 40] [--gpu-steps 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train.__main__ import to_run_config  # noqa: E402
from train.config import register_configs  # noqa: E402
from train.recipe import LoRATrainingRecipe  # noqa: E402

register_configs()


def make_cfg(work: Path, name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"paths.output_dir={work / name}", f"paths.cache_dir={work / 'cache'}", *overrides],
        )
    return to_run_config(cfg)


def timed_run(cfg, count_flops: bool = False) -> dict[str, float]:
    recipe = LoRATrainingRecipe(cfg, Path(cfg.paths.output_dir))
    recipe.setup()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    recipe.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    row = {"it_s": recipe.final_step / elapsed, "steps": recipe.final_step}
    if torch.cuda.is_available():
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if count_flops:
        row["step_flops"] = step_flops(recipe)
    return row


def step_flops(recipe: LoRATrainingRecipe) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from train import data

    batch = data.plan_epoch(recipe.records, [b.batch_size for b in recipe.blueprints], 0, 0)[0]
    with FlopCounterMode(display=False) as counter:
        recipe.accelerator.backward(recipe._loss(batch))
    recipe.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def cpu_rows(work: Path, steps: int) -> list[tuple[str, dict[str, float]]]:
    common = [f"train.max_train_steps={steps}", "train.save_every_n_steps=null", "logger=none", "evaluate=none"]
    uncached = ["train.cache_latents=false", "train.cache_text_encoder_outputs=false"]
    # Builds the model, the data and the caches, so neither timed row pays for them.
    timed_run(make_cfg(work, "warm", [*common, "train.max_train_steps=2"]))
    return [
        ("tiny, uncached (VAE + TE every step)", timed_run(make_cfg(work, "uncached", [*common, *uncached]))),
        ("tiny, cached latents + text", timed_run(make_cfg(work, "cached", common))),
    ]


def full_size_rows(work: Path, steps: int, resolution: int = 512) -> list[tuple[str, dict[str, float]]]:
    from bench.sd15_random import build_random_sd15

    model_dir = build_random_sd15(work / "sd15-random")
    rows = []
    for batch, checkpointing in ((1, False), (4, False), (1, True)):
        cfg = make_cfg(
            work,
            f"sd15-b{batch}-{checkpointing}",
            [
                f"model.path={model_dir}",
                "model.build_tiny=false",
                f"dataset.resolution=[{resolution},{resolution}]",
                "dataset.bucket_reso_steps=64",
                f"dataset.min_bucket_reso={min(256, resolution)}",
                "dataset.max_bucket_reso=1024",
                "dataset.synthetic.num_images=8",
                f"dataset.synthetic.size={resolution}",
                f"dataset.train_data_dir={work / f'data{resolution}'}",
                f"dataset.batch_size={batch}",
                "optimizer=adamw8bit",
                "train.mixed_precision=bf16",
                f"train.gradient_checkpointing={str(checkpointing).lower()}",
                f"train.max_train_steps={steps}",
                "train.save_every_n_steps=null",
                "logger=none",
                "evaluate=none",
            ],
        )
        name = f"SD1.5 full-size, {resolution} px, batch {batch}, bf16, AdamW8bit" + (
            ", grad ckpt" if checkpointing else ""
        )
        rows.append((name, timed_run(cfg, count_flops=True)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument(
        "--full-size-on-cpu", action="store_true", help="smoke-run the full-size rows on CPU (128 px, 1 step)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = cpu_rows(work, args.steps)
        if torch.cuda.is_available():
            rows += full_size_rows(work, args.gpu_steps)
        elif args.full_size_on_cpu:
            rows += full_size_rows(work, steps=1, resolution=128)
    table = Table(title=f"LoRA training throughput (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    for col in ("run", "steps", "it/s", "vs first row", "peak VRAM GiB", "TFLOP/s"):
        table.add_column(col, justify="right" if col != "run" else "left")
    base = rows[0][1]["it_s"]
    for name, r in rows:
        tflops = r["step_flops"] * r["it_s"] / 1e12 if "step_flops" in r else None
        table.add_row(
            name,
            str(r["steps"]),
            f"{r['it_s']:.2f}",
            f"{r['it_s'] / base:.2f}x",
            f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-",
            f"{tflops:.1f}" if tflops is not None else "-",
        )
    Console(width=140).print(table)
    if not torch.cuda.is_available() and not args.full_size_on_cpu:
        print("No CUDA device: the full-size SD1.5 rows run only on a GPU machine.")


if __name__ == "__main__":
    main()
