"""``python -m sweeper report``: one static HTML page per study, readable offline.

Everything the page needs is inside it: images as data URIs, Optuna's plotly
figures with plotly.js bundled (no CDN), a few lines of script to sort the
leaderboard. The images come from the trials' own evaluations (each trial
records its best checkpoint's grid and renders), so nothing is rendered again.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import optuna
import PIL.Image
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evaluate.grid import make_grid
from sweeper.results.locate import StudyRef
from sweeper.results.registry import Registry
from sweeper.results.selection import trial_metrics
from sweeper.space.search_space import display_params
from train.atomic import check_writable_dir, write_bytes_atomic
from train.errors import ConfigError

TEMPLATE = "report.html.j2"
MISSING = (230, 230, 230)  # a cell whose render is not on disk
MIN_CELL = 160  # small renders are enlarged (whole-pixel, nearest) so labels fit above them


@dataclass
class Figure:
    title: str
    html: str | None  # the plotly div, or None with a note
    note: str = ""
    wide: bool = False  # spans the page: plots with one panel per parameter


@dataclass
class Leaderboard:
    columns: list[str]
    rows: list[dict] = field(default_factory=list)  # {"state", "cells": [(text, sort key)]}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _sort_key(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value if math.isfinite(value) else ""
    return "" if value is None else str(value)


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first: by value, or Pareto front first (then by the first objective)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    signs = [1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    front = {t.number for t in study.best_trials} if len(signs) > 1 and complete else set()
    return sorted(complete, key=lambda t: (t.number not in front, signs[0] * t.values[0], t.number))


def objective_names(ref: StudyRef) -> list[str]:
    count = len(ref.study.directions)
    if count == 1:
        return ["value"]
    given = list(ref.cfg.objectives or [])
    return given if len(given) == count else [f"value {i}" for i in range(count)]


def leaderboard(ref: StudyRef) -> Leaderboard:
    study = ref.study
    trials = study.get_trials(deepcopy=False)
    names = objective_names(ref)
    params = sorted({k for t in trials for k in display_params(t.params)})
    scores = sorted({k for t in trials for k in (t.user_attrs.get("best") or {}).get("scores", {}) if "@" not in k})
    board = Leaderboard(["#", "state", *names, *params, *scores, "best step", "time s", "reason"])
    rank = {t.number: i for i, t in enumerate(ranked_trials(study))}
    for t in sorted(trials, key=lambda t: (rank.get(t.number, len(rank)), t.number)):
        best = t.user_attrs.get("best") or {}
        values = list(t.values) if t.values is not None else [None] * len(names)
        seconds = t.duration.total_seconds() if t.duration else None
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
        raw = [t.number, t.state.name, *values, *(display_params(t.params).get(p) for p in params)]
        raw += [best.get("scores", {}).get(s) for s in scores] + [best.get("step"), seconds, reason]
        board.rows.append({"state": t.state.name, "cells": [(_fmt(v), _sort_key(v)) for v in raw]})
    return board


def _png_data_uri(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _file_data_uri(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    with PIL.Image.open(path) as image:
        return _png_data_uri(image.convert("RGB"))


def _enlarged(image: PIL.Image.Image) -> PIL.Image.Image:
    factor = math.ceil(MIN_CELL / max(image.size))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)


def comparison_grid(trials: list[FrozenTrial], names: list[str]) -> PIL.Image.Image | None:
    """Top trials down the side, the same (prompt, seed) renders across: each trial's best checkpoint."""
    records = [(t, (t.user_attrs.get("best") or {}).get("images") or []) for t in trials]
    records = [(t, images) for t, images in records if images]
    if not records:
        return None
    cells = [(image["prompt"], image["seed"]) for image in records[0][1]]
    rows, labels = [], []
    for trial, images in records:
        by_key = {(image["prompt"], image["seed"]): image["path"] for image in images}
        row = []
        for key in cells:
            path = by_key.get(key)
            if path and Path(path).is_file():
                with PIL.Image.open(path) as image:
                    row.append(image.convert("RGB"))
            else:
                row.append(None)
        size = next((image.size for image in row if image is not None), (64, 64))
        rows.append([_enlarged(image or PIL.Image.new("RGB", size, MISSING)) for image in row])
        values = ", ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values, strict=False))
        step = (trial.user_attrs.get("best") or {}).get("step")
        labels.append(f"trial {trial.number}\n{values}\nstep {step}")
    columns = [f"{prompt}\nseed {seed}" for prompt, seed in cells]
    return make_grid(rows, labels, columns)


def optuna_figures(ref: StudyRef) -> list[Figure]:
    """Optuna's own plots; one that the study cannot support yet says why instead."""
    from optuna import visualization as vis

    study = ref.study
    names = objective_names(ref)
    plots = []
    if len(study.directions) > 1:
        plots.append(("Pareto front", lambda: vis.plot_pareto_front(study, target_names=names)))
    targets = [(None, names[0])] if len(names) == 1 else [(i, n) for i, n in enumerate(names)]
    for index, name in targets:
        kw = {} if index is None else {"target": (lambda t, i=index: t.values[i]), "target_name": name}
        suffix = "" if index is None else f" ({name})"
        plots += [
            (f"Optimization history{suffix}", lambda kw=kw: vis.plot_optimization_history(study, **kw)),
            (f"Parameter importances{suffix}", lambda kw=kw: vis.plot_param_importances(study, **kw)),
            (f"Parallel coordinates{suffix}", lambda kw=kw: vis.plot_parallel_coordinate(study, **kw)),
            (f"Slice{suffix}", lambda kw=kw: vis.plot_slice(study, **kw)),
        ]
    if len(study.directions) == 1:
        plots.insert(1, ("Intermediate values (pruning)", lambda: vis.plot_intermediate_values(study)))
    figures = []
    for title, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = make()
            # The section heading names the plot; plotly's own title would repeat it.
            figure.update_layout(
                title_text="", margin=dict(l=60, r=30, t=30, b=50), height=420, template="plotly_white"
            )
            div = figure.to_html(
                full_html=False, include_plotlyjs=False, default_width="100%", config={"responsive": True}
            )
            figures.append(Figure(title, div, wide=title.startswith(("Slice", "Parallel"))))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            figures.append(Figure(title, None, f"not available yet: {err}"))
    return figures


def problem_trials(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.PRUNED)):
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or "(no reason recorded)"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in display_params(t.params).items())
        rows.append({"number": t.number, "state": t.state.name, "reason": reason, "params": params})
    return rows


def default_output(ref: StudyRef) -> Path:
    if ref.sweep_dir is not None:
        return ref.sweep_dir / "report.html"
    return Path(f"report-{ref.study.study_name}.html")


def render_report(ref: StudyRef, out: Path | None = None, top: int = 4) -> Path:
    import jinja2
    from plotly.offline import get_plotlyjs

    key = "--out" if out else "the sweep dir"
    out = Path(out) if out else default_output(ref)
    if out.is_dir():
        raise ConfigError(f"{key}: {out} is a directory; give a file name such as {out / 'report.html'}")
    check_writable_dir(out.parent, key)  # before minutes of figures, not after
    study = ref.study
    names = objective_names(ref)
    ranked = ranked_trials(study)
    best = ranked[0] if ranked else None
    best_record = (best.user_attrs.get("best") or {}) if best else {}
    comparison = comparison_grid(ranked[:top], names)
    promoted = Registry(ref.cfg.promote.registry, study.study_name).current()
    bests = [t.user_attrs.get("best") or {} for t in study.get_trials(deepcopy=False)]
    demo = any(b.get("demo_weights") for b in bests)
    judged = any("judge_fidelity" in b.get("scores", {}) for b in bests)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True)
    page = env.get_template(TEMPLATE).render(
        study=study.study_name,
        storage=ref.where,
        directions=[f"{n}: {d.name.lower()}" for n, d in zip(names, study.directions, strict=True)],
        counts={s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState},
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        demo=demo,
        judged=judged,
        best=best,
        best_values=", ".join(f"{n} {v:.4g}" for n, v in zip(names, best.values, strict=True)) if best else "",
        best_params=display_params(best.params) if best else {},
        best_scores=trial_metrics(best, ref.cfg.objectives) if best else {},
        best_record=best_record,
        best_grid=_file_data_uri(best_record.get("grid")),
        comparison=_png_data_uri(comparison) if comparison else None,
        top=min(top, len(ranked)),
        board=leaderboard(ref),
        figures=optuna_figures(ref),
        problems=problem_trials(study),
        promoted=promoted,
        plotly_js=get_plotlyjs(),
        fmt=_fmt,
        escape=html.escape,
    )
    write_bytes_atomic(out, page.encode("utf-8"))
    return out
