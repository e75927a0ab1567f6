"""Score saved network files side by side: a comparison grid and a score table.

Plain kohya LoRA, LoCon and LoRA-FA files are loaded into the base model with
diffusers' ``load_lora_weights`` (the path users' tools take) and unloaded after.
diffusers cannot run the other families (it drops DoRA's ``dora_scale`` and reads
no LoHa, LoKr or hypernetwork), so for those our own network, rebuilt from the
file, is applied to a fresh copy of the base model's parts. Every file renders at
the same prompts and seeds, SD 1.x/2.x or SDXL, and is scored with one CLIP pass per image.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open

from evaluate.compare_check import CheckedComparison, check_comparison
from evaluate.grid import make_grid, save_png_atomic
from evaluate.judge import JudgeScorer
from evaluate.objective import is_better, objective_value, used_metrics
from evaluate.pipelines import build_pipeline
from evaluate.render import Render, Renderer, RenderJob, Strength, plan_renders
from evaluate.score_config import ScoreConfig
from evaluate.scoring import build_scorer
from train.atomic import write_bytes_atomic
from train.errors import ConfigError
from train.models.loading import BaseModel, load_base_model
from train.networks import Network, NetworkTargets, build_network
from train.networks.from_file import NetworkFile
from train.networks.names import modules_missing_from

# The Renderer sets strengths on this adapter name, as in training.
from train.networks.peft_network import ADAPTER

log = logging.getLogger(__name__)
# Families diffusers' load_lora_weights reads in full; the others get our own network.
DIFFUSERS_FAMILIES = ("lora", "locon", "lora_fa")
MakeRenderer = Callable[[BaseModel, Strength | None], Renderer]


@dataclass
class FileScores:
    path: Path
    step: str
    epoch: str
    scores: dict[str, float]
    value: float | None


class FileComparison:
    def __init__(self, cfg: ScoreConfig, out_dir: Path, checked: CheckedComparison | None = None):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.checked = checked  # the entry point's pre-flight, run before this module was imported

    def preflight(self) -> None:
        """Every input checked before the model loads (evaluate/compare_check.py); keep what it read."""
        checked = self.checked = self.checked or check_comparison(self.cfg)
        self.files, self.networks, self.prompts, self.references = (
            checked.files,
            checked.networks,
            checked.prompts,
            checked.references,
        )
        self.metadata = {path: found.metadata for path, found in self.networks.items()}
        self.has_text_encoder = {path: bool(found.text_encoders) for path, found in self.networks.items()}

    def run(self) -> list[FileScores]:
        self.preflight()
        cfg, ev = self.cfg, self.cfg.evaluate
        device = torch.device(
            "cuda"
            if cfg.device == "auto" and torch.cuda.is_available()
            else ("cpu" if cfg.device == "auto" else cfg.device)
        )
        model = load_base_model(cfg.model)
        check_files_fit(self.files, model, cfg.model.path)
        for module in (model.unet, model.text_encoder, model.text_encoder_2, model.vae):
            if module is not None:
                module.to(device)
        # SD or SDXL: StableDiffusionXLPipeline when the model has a second text encoder.
        pipe = build_pipeline(
            vae=model.vae,
            text_encoder=model.text_encoder,
            tokenizer=model.tokenizer,
            text_encoder_2=model.text_encoder_2,
            tokenizer_2=model.tokenizer_2,
            unet=model.unet,
            scheduler=model.noise_scheduler,
        )
        resolution = cfg.dataset.resolution
        size = (ev.width or resolution[0], ev.height or resolution[-1])

        def make_renderer(parts: BaseModel, strength: Strength | None = None) -> Renderer:
            return Renderer.for_model(parts, device=device, cfg=ev, default_size=size, strength=strength)

        scorer = build_scorer(ev, self.references, Path(cfg.paths.cache_dir) / "clip")
        judge = JudgeScorer.from_path(ev.judge_path) if ev.judge_path else None
        jobs = plan_renders(self.prompts, list(ev.seeds), [1.0], baseline=False)
        rows, labels, results = [], [], []
        for path in self.files:
            renders = self._render_file(self.networks[path], model, pipe, make_renderer, jobs)
            images, prompts = [r.image for r in renders], [r.job.prompt.prompt for r in renders]
            _, scores = scorer.score(images, prompts)
            if judge is not None:  # the world's ground truth, beside the scores (never the objective)
                scores.update(judge.score(images, prompts)[1])
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

    def _render_file(
        self,
        found: NetworkFile,
        model: BaseModel,
        pipe: DiffusionPipeline,
        make_renderer: MakeRenderer,
        jobs: list[RenderJob],
    ) -> list[Render]:
        """The file's renders; the base model is as before afterwards, whichever loader ran."""
        if found.family in DIFFUSERS_FAMILIES:
            self._load_lora(pipe, found.path)
            try:
                return make_renderer(model, None).render(jobs)
            finally:
                # Unload, not just delete the adapter: the next file may copy the base model's modules.
                pipe.unload_lora_weights()
        parts, network = apply_network(model, found)
        return make_renderer(parts, network.strength).render(jobs)

    def _load_lora(self, pipe: DiffusionPipeline, path: Path) -> None:
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


def check_files_fit(files: list[Path], model: BaseModel, model_path: str) -> None:
    """Every module a file names exists in the base model; else one ConfigError naming the files and modules.

    diffusers' loader skips modules it cannot place (a warning, then the base model's own
    images scored as the file's) and peft stops with NoMatchingPeftModuleError when none fit.
    """
    targets, problems = NetworkTargets.of(model), []
    for path in (f for f in files if f.suffix.lower() == ".safetensors"):
        with safe_open(path, framework="pt") as handle:
            names = {key.partition(".")[0] for key in handle.keys()}  # noqa: SIM118 (a safetensors handle)
        missing = modules_missing_from(names, targets)
        if missing:
            problems.append(
                f"{path}: {len(missing)} of its {len(names)} modules are not in the base model "
                f"(e.g. {', '.join(missing[:3])}): made for another base model than model.path={model_path}?"
            )
    if problems:
        raise ConfigError("files: " + "; ".join(problems))


def apply_network(model: BaseModel, found: NetworkFile) -> tuple[BaseModel, Network]:
    """The base model with fresh copies of the parts the file's network changes, that network loaded into them.

    Copies, so the base model never carries one file's network into the next file's renders.
    """
    cfg = found.config
    copies: dict[str, torch.nn.Module] = {}
    if cfg.train_unet:
        copies["unet"] = copy.deepcopy(model.unet)
    if cfg.train_text_encoder:
        copies["text_encoder"] = copy.deepcopy(model.text_encoder)
        if model.text_encoder_2 is not None:
            copies["text_encoder_2"] = copy.deepcopy(model.text_encoder_2)
    parts = dataclasses.replace(model, **copies)
    network = build_network(cfg)
    network.apply(NetworkTargets.of(parts), seed=0)
    network.load(found.path, key="files")
    return parts, network
