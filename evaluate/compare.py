"""Score saved LoRA files side by side: a comparison grid and a score table.

Each file is loaded into the base model with diffusers' ``load_lora_weights``
(the path users' tools take), rendered at the same prompts and seeds, scored
with one CLIP pass per image, then unloaded before the next.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from evaluate.grid import make_grid, save_png_atomic
from evaluate.objective import check_objective, is_better, objective_value, used_metrics
from evaluate.prompts import load_prompts
from evaluate.render import Renderer, plan_renders
from evaluate.score_config import ScoreConfig
from evaluate.scoring import build_scorer
from train import data
from train.atomic import write_bytes_atomic
from train.data.split import split_validation
from train.errors import ConfigError
from train.lora_format import read_lora
from train.models.loading import ensure_model_available, load_base_model

log = logging.getLogger(__name__)
ADAPTER = "default"  # the Renderer sets strengths on this adapter name, as in training


@dataclass
class FileScores:
    path: Path
    step: str
    epoch: str
    scores: dict[str, float]
    value: float | None


def expand_files(entries: list[str]) -> list[Path]:
    """Files as given; a folder stands for its *.safetensors, sorted. Missing paths -> one ConfigError."""
    files, missing = [], []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            files += sorted(path.glob("*.safetensors"))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(entry)
    if missing:
        raise ConfigError(f"files: not found: {', '.join(missing)}")
    if not files:
        raise ConfigError(f"files: no .safetensors files in {', '.join(entries)}")
    return files


class FileComparison:
    def __init__(self, cfg: ScoreConfig, out_dir: Path):
        self.cfg, self.out_dir = cfg, Path(out_dir)

    def preflight(self) -> None:
        cfg = self.cfg
        self.files = expand_files(list(cfg.files))
        self.metadata, self.has_text_encoder = {}, {}
        for path in self.files:  # a bad file fails here, named
            tensors, self.metadata[path] = read_lora(path)
            self.has_text_encoder[path] = any(key.startswith("lora_te") for key in tensors)
        self.prompts = load_prompts(cfg.evaluate)
        self.references = []
        if cfg.dataset.train_data_dir or cfg.dataset.dataset_config:
            # The same training images the run compared against: held-out ones excluded.
            records = data.load_dataset(cfg.dataset)[1]
            train, _ = split_validation(records, cfg.dataset.validation_split, cfg.dataset.validation_seed)
            self.references = [r.path for r in train]
        available = cfg.evaluate.available_metrics(has_validation_images=False)
        if not self.references:
            available.discard("clip_i")
        check_objective(cfg.evaluate.objective, available)
        ensure_model_available(cfg.model)

    def run(self) -> list[FileScores]:
        self.preflight()
        cfg, ev = self.cfg, self.cfg.evaluate
        device = torch.device(
            "cuda"
            if cfg.device == "auto" and torch.cuda.is_available()
            else ("cpu" if cfg.device == "auto" else cfg.device)
        )
        model = load_base_model(cfg.model)
        for module in (model.unet, model.text_encoder, model.vae):
            module.to(device)
        pipe = StableDiffusionPipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            unet=model.unet,
            scheduler=model.noise_scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        resolution = cfg.dataset.resolution
        size = (ev.width or resolution[0], ev.height or resolution[-1])
        renderer = Renderer.for_model(model, device=device, cfg=ev, default_size=size)
        scorer = build_scorer(ev, self.references, Path(cfg.paths.cache_dir) / "clip")
        jobs = plan_renders(self.prompts, list(ev.seeds), [1.0], baseline=False)
        rows, labels, results = [], [], []
        for path in self.files:
            self._load_lora(pipe, path)
            renders = renderer.render(jobs)
            pipe.delete_adapters(ADAPTER)
            _, scores = scorer.score([r.image for r in renders], [r.job.prompt.prompt for r in renders])
            value = objective_value(scores, ev.objective) if set(used_metrics(ev.objective)) <= set(scores) else None
            meta = self.metadata[path]
            results.append(FileScores(path, meta.get("ss_steps", "?"), meta.get("ss_epoch", "?"), scores, value))
            rows.append([r.image for r in renders])
            labels.append(f"{path.name}\nstep {meta.get('ss_steps', '?')}")
        columns = [f"{j.prompt.prompt[:24]}\nseed {j.seed}" for j in jobs]
        title = "LoRA comparison" + (" (demo weights)" if scorer.demo_weights else "")
        save_png_atomic(make_grid(rows, labels, columns, title=title), self.out_dir / "comparison_grid.png")
        self.scorer_demo = scorer.demo_weights
        self._write_tables(results, scorer.demo_weights)
        return results

    def _load_lora(self, pipe: StableDiffusionPipeline, path: Path) -> None:
        quiet = logging.getLogger("diffusers.loaders.lora_base")
        level = quiet.level
        if not self.has_text_encoder[path]:  # diffusers warns that the file has no text-encoder keys: expected here
            quiet.setLevel(logging.ERROR)
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER)
        finally:
            quiet.setLevel(level)

    def _write_tables(self, results: list[FileScores], demo: bool) -> None:
        metrics = sorted({k for r in results for k in r.scores if "@" not in k})
        best = None
        for r in results:
            if r.value is not None and is_better(
                r.value, best.value if best else None, self.cfg.evaluate.objective.direction
            ):
                best = r
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "step", "epoch", *metrics, "objective", "best"])
        for r in results:
            writer.writerow(
                [
                    str(r.path),
                    r.step,
                    r.epoch,
                    *(f"{r.scores.get(m, float('nan')):.6g}" for m in metrics),
                    "" if r.value is None else f"{r.value:.6g}",
                    "*" if r is best else "",
                ]
            )
        write_bytes_atomic(self.out_dir / "scores.csv", buffer.getvalue().encode())
        payload = {
            "demo_weights": demo,
            "objective": dict(self.cfg.evaluate.objective.metrics),
            "best": str(best.path) if best else None,
            "files": [
                {"file": str(r.path), "step": r.step, "epoch": r.epoch, "scores": r.scores, "objective": r.value}
                for r in results
            ],
        }
        write_bytes_atomic(self.out_dir / "scores.json", json.dumps(payload, indent=2).encode())
        self.best = best
        self.metric_names = metrics
