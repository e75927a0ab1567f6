"""One evaluation of a LoRA at a checkpoint: grid, scores, validation loss, logs.

The evaluator holds what stays fixed for a run (render jobs, the scorer, the
baseline row) and turns each call into an ``EvalResult`` tied to the
checkpoint file it judged. Scores from the locally built demo CLIP are logged
under ``eval_demo/`` instead of ``eval/``, so nobody mistakes them for real ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluate.config import JUDGE_METRICS, EvaluateConfig
from evaluate.grid import make_grid, save_png_atomic
from evaluate.judge import JudgeScorer
from evaluate.objective import is_better, objective_value, used_metrics
from evaluate.render import Render, Renderer, plan_renders
from evaluate.scoring import build_scorer
from train.atomic import write_bytes_atomic

RESULTS_FILE = "eval_results.json"


@dataclass
class EvalResult:
    step: int
    epoch: int
    checkpoint: str | None
    scores: dict[str, float]
    value: float | None
    grid_path: str | None
    demo_weights: bool = False
    # The scored renders one by one ({prompt, seed, path}): reports compare runs image by image.
    images: list[dict] = field(default_factory=list)


def _row_label(prompt: str, multiplier: float | None) -> str:
    return f"{prompt}\n[{'LoRA off' if multiplier is None else f'LoRA x{multiplier:g}'}]"


class Evaluator:
    def __init__(
        self,
        cfg: EvaluateConfig,
        *,
        prompts: list,
        renderer,
        scorer=None,
        judge=None,
        validation: Callable[[], float] | None = None,
        logger=None,
        out_dir: Path,
    ):
        self.cfg = cfg
        self.renderer = renderer
        self.scorer = scorer
        self.judge = judge  # the world's judge (evaluate/judge.py): ground truth beside the scores
        self.validation = validation
        self.logger = logger
        self.out_dir = Path(out_dir)
        self.jobs = plan_renders(prompts, list(cfg.seeds), list(cfg.multipliers), cfg.baseline)
        # The objective is judged at full strength when it is rendered, else at the strongest.
        self.score_multiplier = 1.0 if 1.0 in cfg.multipliers else max(cfg.multipliers)
        self.demo_weights = bool(scorer is not None and scorer.demo_weights)
        self.prefix = "eval_demo" if self.demo_weights else "eval"
        self._baseline: list[Render] | None = None
        self.history: list[EvalResult] = []
        self.best: EvalResult | None = None

    def available_metrics(self) -> set[str]:
        metrics = set()
        if self.scorer is not None:
            metrics |= set(self.scorer.available_metrics())
        if self.judge is not None:
            metrics |= set(JUDGE_METRICS)
        if self.validation is not None:
            metrics.add("val_loss")
        return metrics

    def evaluate(self, step: int, epoch: int, checkpoint: Path | None) -> EvalResult:
        renders = self._render()
        grid_path = self._save_grid(renders, step)
        images = self._save_scored_images(renders, step)
        scores, per_image = self._scores(renders)
        if self.validation is not None:
            scores["val_loss"] = self.validation()
        value = None
        if all(name in scores for name in used_metrics(self.cfg.objective)):
            value = objective_value(scores, self.cfg.objective)
        result = EvalResult(
            step, epoch, str(checkpoint) if checkpoint else None, scores, value, str(grid_path), self.demo_weights, images
        )
        self.history.append(result)
        if value is not None and (self.best is None or is_better(value, self.best.value, self.cfg.objective.direction)):
            self.best = result
        self._log(result, renders, per_image)
        self._write_results()
        return result

    # -------------------------------------------------------------- internals
    def _render(self) -> list[Render]:
        # With the LoRA off the images never change: render the baseline row once.
        lora_jobs = [j for j in self.jobs if j.multiplier is not None]
        if self._baseline is None:
            self._baseline = self.renderer.render([j for j in self.jobs if j.multiplier is None])
        renders = self._baseline + self.renderer.render(lora_jobs)
        order = {job: i for i, job in enumerate(self.jobs)}
        return sorted(renders, key=lambda r: order[r.job])

    def _save_grid(self, renders: list[Render], step: int) -> Path:
        rows: dict[tuple, list] = {}
        for render in renders:
            rows.setdefault((render.job.prompt_index, render.job.multiplier is None, render.job.multiplier), []).append(
                render
            )
        ordered = [rows[key] for key in sorted(rows, key=lambda k: (k[0], not k[1], k[2] or 0.0))]
        labels = [_row_label(row[0].job.prompt.prompt, row[0].job.multiplier) for row in ordered]
        columns = [f"seed {r.job.seed}" for r in ordered[0]]
        title = f"step {step}" + (" (demo weights)" if self.demo_weights else "")
        grid = make_grid([[r.image for r in row] for row in ordered], labels, columns, title=title)
        return save_png_atomic(grid, self.out_dir / "eval" / f"grid-step{step:06d}.png")

    def _save_scored_images(self, renders: list[Render], step: int) -> list[dict]:
        """The renders at the scored strength as PNGs, in grid order (prompt, then seed)."""
        folder = self.out_dir / "eval" / f"images-step{step:06d}"
        saved = []
        for render in renders:
            job = render.job
            if job.multiplier != self.score_multiplier:
                continue
            path = save_png_atomic(render.image, folder / f"p{job.prompt_index:02d}-s{job.seed}.png")
            saved.append({"prompt": job.prompt.prompt, "seed": job.seed, "path": str(path)})
        return saved

    def _scores(self, renders: list[Render]) -> tuple[dict[str, float], dict[int, dict]]:
        """Aggregates (the objective's multiplier unsuffixed, each row also as name@x1/name@baseline), and per
        render its own values (CLIP scores, the judge's verdict) for the image table."""
        scores: dict[str, float] = {}
        per_image: dict[int, dict] = {id(r): {} for r in renders}
        by_multiplier: dict[float | None, list[Render]] = {}
        for render in renders:
            by_multiplier.setdefault(render.job.multiplier, []).append(render)
        for multiplier, group in by_multiplier.items():
            images, prompts = [r.image for r in group], [r.job.prompt.prompt for r in group]
            aggregate: dict[str, float] = {}
            if self.scorer is not None:
                image_scores, aggregate = self.scorer.score(images, prompts)
                for render, s in zip(group, image_scores, strict=True):
                    per_image[id(render)].update(clip_t=s.clip_t, clip_i=s.clip_i, aesthetic=s.aesthetic)
            if self.judge is not None:
                verdicts, judged = self.judge.score(images, prompts)
                for render, v in zip(group, verdicts, strict=True):
                    per_image[id(render)].update(judge_shape=v.shape, judge_colour=v.colour, judge_background=v.background)
                aggregate = {**aggregate, **judged}
            if multiplier == self.score_multiplier:
                scores.update(aggregate)  # the row the objective judges, unsuffixed
                continue
            suffix = "baseline" if multiplier is None else f"x{multiplier:g}"
            scores.update({f"{name}@{suffix}": v for name, v in aggregate.items()})
        return scores, per_image

    def _log(self, result: EvalResult, renders: list[Render], per_image: dict[int, dict]) -> None:
        if self.logger is None:
            return
        scalars = {f"{self.prefix}/{k}": v for k, v in result.scores.items() if not math.isnan(v)}
        if result.value is not None:
            scalars[f"{self.prefix}/objective"] = result.value
        self.logger.log_scalars(result.step, scalars)
        from PIL import Image

        with Image.open(result.grid_path) as grid:
            self.logger.log_image(result.step, f"{self.prefix}/grid", grid.copy(), caption=f"step {result.step}")
        values = ["clip_t", "clip_i", "aesthetic"]
        values += [k for k in ("judge_shape", "judge_colour", "judge_background") if self.judge is not None]
        columns = ["step", "prompt", "seed", "lora", "image", *values]
        rows = []
        for render in renders:
            lora = "off" if render.job.multiplier is None else f"x{render.job.multiplier:g}"
            row = [result.step, render.job.prompt.prompt, render.job.seed, lora, render.image]
            rows.append(row + [per_image[id(render)].get(name) for name in values])
        self.logger.log_table(result.step, f"{self.prefix}/images", columns, rows)
        if self.best is not None:
            self.logger.log_summary(
                {f"best/{k}": v for k, v in self.best.scores.items()}
                | {
                    "best/objective": self.best.value,
                    "best/step": self.best.step,
                    "best/checkpoint": self.best.checkpoint,
                }
            )

    def _write_results(self) -> None:
        payload = {
            "objective": {"metrics": dict(self.cfg.objective.metrics), "direction": self.cfg.objective.direction},
            "demo_weights": self.demo_weights,
            "best": asdict(self.best) if self.best else None,
            "evaluations": [asdict(r) for r in self.history],
        }
        write_bytes_atomic(self.out_dir / RESULTS_FILE, json.dumps(payload, indent=2).encode())


def build_training_evaluator(
    cfg: EvaluateConfig,
    *,
    prompts: list,
    model,
    device,
    dtype,
    resolution: tuple[int, int],
    reference_images: list[Path],
    cache_dir: Path,
    validation: Callable[[], float] | None,
    logger,
    out_dir: Path,
    strength=None,
) -> Evaluator:
    """The evaluator of a training run: renders with the run's live modules, the network active.

    ``strength(multiplier)`` sets the network's strength for a grid row (the network's own).
    """
    size = (cfg.width or resolution[0], cfg.height or resolution[1])
    renderer = Renderer.for_model(model, device=device, cfg=cfg, default_size=size, dtype=dtype, strength=strength)
    scorer = build_scorer(cfg, reference_images, cache_dir) if (cfg.clip_path or cfg.build_demo_clip) else None
    judge = JudgeScorer.from_path(cfg.judge_path) if cfg.judge_path else None
    return Evaluator(
        cfg,
        prompts=prompts,
        renderer=renderer,
        scorer=scorer,
        judge=judge,
        validation=validation,
        logger=logger,
        out_dir=out_dir,
    )
