"""World validity, in one run: does the world give LoRA training a ground truth, and do our scores track it?

1. Build: the seconds and bytes of the shipped build (BUILD.json); with ``--rebuild``,
   the build again into the work dir, timed, and each file's sha256 against the shipped one.
2. Judge: its accuracy on fresh generator images, on their VAE round trips, and on them bent by a
   smooth random warp of 1-3 pixels (a model's renders are never exact polygons); where "star"
   ends for it, on stars drawn ever fatter up to a decagon.
3. Base model: the judge on renders of seen prompts (shape, colour, background), and
   judge_fidelity on concept prompts before any LoRA (the concept must be new to it).
4. ``make train``: the bare ``python -m train`` (the embedded default), timed; its final
   judge_fidelity with the LoRA on and off, and editability.
5. ``make sweep``: the bare ``python -m train -m sweep=demo``, timed; the best trial's judge.
6. A real landscape: N random configurations (lr log 1e-5..1e-2, dim 2..32 for the
   attention and the conv layers alike, alpha ratio, steps 100..1000) on the world's tuned
   LoRA (LoCon with the text encoder), one sweep with a random sampler and no pruning, each evaluated at
   25/50/75/100% of its steps. Judge fidelity x editability (editability counts 0 where
   no star was drawn) of the best, median and worst; the Spearman correlation of each
   score with it; the regret of the objective's pick; and the early signal (each score at
   25% and 50% against the final judge score), the premise of pruning.

All runs use the shipped world (paths.world_dir) through the commands users type; the
judge is only read, never optimised. ``--configs`` and ``--seed`` size the landscape.

    python bench/world_validity.py [--configs 24] [--seed 0] [--rebuild] [--keep DIR] [--figure PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from bench.sweep_overhead import bench_workdir, say  # noqa: E402

# Smooth bends of fresh images, in pixels of 64: how far from the generator's polygons the judge still reads them.
WARPS_PX = (1, 2, 3)
# Stars with their inner corners from sharp to a decagon (the generator's: 0.48): where "star" ends for the judge.
STAR_INNERS = (0.3, 0.48, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0)
SCORES = ("clip_t", "clip_i", "aesthetic", "val_loss", "objective")
# The landscape's preset, written into the work dir's config dir (derived keys have dots, which only YAML
# keeps as one key): random configurations, no pruning, an evaluation at each quarter of a trial's steps.
LANDSCAPE_PRESET = """# @package _global_
hydra:
  sweeper:
    study_name: landscape
    sampler: {_target_: optuna.samplers.RandomSampler, seed: %(seed)d}
    pruner: {_target_: optuna.pruners.NopPruner}
    params:
      optimizer.learning_rate: tag(log, interval(1e-5, 1e-2))
      network.dim: choice(2, 4, 8, 16, 32)
      _alpha_ratio: choice(0.25, 0.5, 1.0, 2.0)
      _quarter: choice(25, 50, 100, 250)
    derived:
      network.alpha: network.dim * _alpha_ratio
      network.conv_dim: network.dim
      network.conv_alpha: network.dim * _alpha_ratio
      train.max_train_steps: _quarter * 4
      evaluate.every_n_steps: _quarter
train:
  save_every_n_steps: null
"""


def run(args: list[str], cwd: Path, cache: Path, log: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "LORA_SWEEP_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with open(log, "ab") as err:
        done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n" + "\n".join(tail))
    return seconds, done


def product(scores: dict) -> float:
    """fidelity x editability; editability is undefined (NaN) where no star was drawn, which counts 0."""
    fidelity, editability = scores.get("judge_fidelity", math.nan), scores.get("judge_editability", math.nan)
    if math.isnan(fidelity):
        return math.nan
    return fidelity * (0.0 if math.isnan(editability) else editability)


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 3:
        return math.nan
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(rho)


def table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for column in header:
        out.add_column(column, justify="left" if column == header[0] else "right")
    for row in rows:
        out.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=140).print(out)


# ---------------------------------------------------------------- sections
def build_section(world_dir: Path, rebuild: bool, work: Path, log: Path) -> dict:
    shipped = json.loads((world_dir / "BUILD.json").read_text())
    result = {"shipped_seconds": shipped["seconds"], "bytes": shipped["bytes"], "threads": shipped["threads"]}
    if rebuild:
        out = work / "rebuilt-world"
        seconds, _ = run(["-m", "evaluate.world_build", "--out", str(out)], ROOT, work / "cache", log)
        again = json.loads((out / "BUILD.json").read_text())
        same = [f for f, digest in shipped["files"].items() if again["files"].get(f) == digest]
        result |= {"rebuild_seconds": seconds, "identical_files": f"{len(same)}/{len(shipped['files'])}"}
    return result


def model_section(world_dir: Path, cfg) -> dict:
    from evaluate import world_checks
    from evaluate.judge import Judge
    from train.config import ModelConfig
    from train.data import world
    from train.models.loading import load_base_model

    judge = Judge.load(world_dir / "world-judge")
    fresh = list(world.scenes(10_001, 2000, shapes=world.SHAPES))
    from evaluate.judge import accuracy

    model = load_base_model(ModelConfig(name="world", path=str(world_dir / "world-sd15")))
    seen = world_checks.render(model, cfg, world_checks.seen_prompts(40), [0, 1])
    concept = world_checks.render(model, cfg, world_checks.concept_prompts(), [0, 1])
    return {
        "judge_fresh": accuracy(judge, fresh),
        "judge_round_trip": world_checks.round_trip_accuracy(model.vae, judge, 500, 10_002),
        "judge_warped": {px: world_checks.warped_accuracy(judge, 800, 10_003, px) for px in WARPS_PX},
        "star_calibration": world_checks.star_calibration(judge, STAR_INNERS, 400, 10_004),
        "base_seen": world_checks.label_accuracy(judge, seen),
        "base_concept": world_checks.concept_scores(judge, concept),
        "renders": len(seen.images),
    }


def final_scores(run_dir: Path) -> list[dict]:
    results = json.loads((run_dir / "eval_results.json").read_text())
    return [{**e["scores"], "objective": e["value"], "step": e["step"]} for e in results["evaluations"]]


def train_section(work: Path, log: Path, figure: Path | None) -> dict:
    run_dir = work / "make-train"
    seconds, _ = run(["-m", "train", f"hydra.run.dir={run_dir}"], work, work / "cache", log)
    if figure:  # the README's figure: the default run's last grid
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sorted((run_dir / "eval").glob("grid-step*.png"))[-1], figure)
    last = final_scores(run_dir)[-1]
    return {"seconds": seconds, **{k: last.get(k, math.nan) for k in (
        "judge_fidelity", "judge_fidelity@baseline", "judge_editability", "judge_editability@baseline")}}


def sweep_section(work: Path, log: Path) -> dict:
    sweep_dir = work / "make-sweep"
    seconds, _ = run(["-m", "train", "-m", "sweep=demo", f"hydra.sweep.dir={sweep_dir}"], work, work / "cache", log)
    trials = [final_scores(d) for d in sweep_dir.iterdir() if (d / "eval_results.json").is_file()]
    best = max((t for t in trials if t[-1]["objective"] is not None), key=lambda t: max(
        e["objective"] for e in t if e["objective"] is not None))
    pick = max((e for e in best if e["objective"] is not None), key=lambda e: e["objective"])
    return {"seconds": seconds, "trials": len(trials), "best_judge_product": product(pick),
            "best_judge_fidelity": pick.get("judge_fidelity", math.nan)}


def landscape_section(work: Path, log: Path, configs: int, seed: int) -> dict:
    sweep_dir = work / "landscape"
    conf = work / "landscape-conf"
    (conf / "sweep").mkdir(parents=True, exist_ok=True)
    (conf / "sweep" / "landscape.yaml").write_text(LANDSCAPE_PRESET % {"seed": seed})
    args = ["-m", "train", "--config-dir", str(conf), "-m", "sweep=landscape", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.n_trials={configs}"]
    seconds, _ = run(args, work, work / "cache", log)
    runs = [final_scores(d) for d in sorted(sweep_dir.iterdir(), key=lambda p: p.name)
            if (d / "eval_results.json").is_file()]
    finals = [r[-1] for r in runs if len(r) >= 4]
    judge = [product(f) for f in finals]
    ordered = sorted(j for j in judge if not math.isnan(j))
    # val_loss: lower is better, so its correlation with the judge is expected to be negative.
    correlation = {s: spearman([f.get(s, math.nan) if f.get(s) is not None else math.nan for f in finals], judge)
                   for s in SCORES}
    early = {}
    for fraction, index in (("25%", 0), ("50%", 1)):
        early[fraction] = {s: spearman([r[index].get(s) if r[index].get(s) is not None else math.nan for r in runs
                                        if len(r) >= 4], judge) for s in SCORES}
    objective_pick = max(range(len(finals)), key=lambda i: finals[i]["objective"] if finals[i]["objective"]
                         is not None else -math.inf)
    return {
        "seconds": seconds, "configs": len(finals),
        "best": ordered[-1], "median": statistics.median(ordered), "worst": ordered[0],
        "correlation": correlation, "early": early,
        "objective_pick_judge": judge[objective_pick], "judge_best": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="also rebuild the world, timed, and compare its bytes")
    parser.add_argument("--keep", type=Path, help="work dir to keep (default: a temporary one)")
    parser.add_argument("--figure", type=Path, help="copy the default run's last grid here (the README's figure)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["model", "train", "sweep", "landscape"])
    args = parser.parse_args()
    from tests.conftest import compose_run  # the shipped conf/, composed as python -m train does

    with bench_workdir(args.keep, "world-validity-") as work:
        log = work / "bench.log"
        say(f"work dir {work}; commands' stderr in {log}")
        cfg = compose_run(["model=world", "dataset=world", "evaluate=world"], work / "compose", work / "cache")
        world_dir = Path(cfg.paths.world_dir)
        report: dict = {"build": build_section(world_dir, args.rebuild, work, log)}
        if "model" not in args.skip:
            report["model"] = model_section(world_dir, cfg.evaluate)
        if "train" not in args.skip:
            report["train"] = train_section(work, log, args.figure)
        if "sweep" not in args.skip:
            report["sweep"] = sweep_section(work, log)
        if "landscape" not in args.skip:
            report["landscape"] = landscape_section(work, log, args.configs, args.seed)
        (work / "world_validity.json").write_text(json.dumps(report, indent=2))
        print_report(report)


def print_report(r: dict) -> None:
    b = r["build"]
    rows = [["shipped build (BUILD.json)", f"{sum(b['shipped_seconds'].values()):.0f} s", f"{b['bytes'] / 1e6:.1f} MB"]]
    rows += [[f"  {part}", f"{s:.0f} s", ""] for part, s in b["shipped_seconds"].items()]
    if "rebuild_seconds" in b:
        rows.append(["rebuild in this run", f"{b['rebuild_seconds']:.0f} s", f"identical files {b['identical_files']}"])
    table("Build (2 cores)", ["", "time", "size"], rows)
    if "model" in r:
        m = r["model"]
        rows = [["judge, fresh generator images", m["judge_fresh"]["shape"], m["judge_fresh"]["colour"],
                 m["judge_fresh"]["background"]],
                ["judge, VAE round trips", m["judge_round_trip"]["shape"], m["judge_round_trip"]["colour"],
                 m["judge_round_trip"]["background"]],
                *[[f"judge, fresh images bent ~{px} px (stars read as stars: {m['judge_warped'][px]['star']:.3f})",
                   m["judge_warped"][px]["shape"], m["judge_warped"][px]["colour"], m["judge_warped"][px]["background"]]
                  for px in WARPS_PX],
                [f"base model, seen prompts ({m['renders']} renders; goal >= 0.8)", m["base_seen"]["shape"],
                 m["base_seen"]["colour"], m["base_seen"]["background"]]]
        table("Judge and base model: accuracy", ["", "shape", "colour", "background"], rows)
        table("Judge on stars drawn fatter (inner corners at r of the outer; the generator's: 0.48)",
              ["inner r", "read as star", "other verdicts"],
              [[inner, shares.get("star", 0.0), ", ".join(f"{k} {v:.2f}" for k, v in shares.items() if k != "star")]
               for inner, shares in m["star_calibration"].items()])
        table("Base model on concept prompts, no LoRA", ["", "value", "goal"],
              [["judge_fidelity", m["base_concept"]["judge_fidelity"], "<= 0.05"]])
    if "train" in r:
        t = r["train"]
        table("make train (python -m train)", ["", "LoRA on", "LoRA off", "goal"], [
            ["judge_fidelity", t["judge_fidelity"], t["judge_fidelity@baseline"], ">= 0.7 vs <= 0.05"],
            ["judge_editability", t["judge_editability"], t["judge_editability@baseline"], ""],
            ["seconds", t["seconds"], "", ""]])
    if "sweep" in r:
        s = r["sweep"]
        table("make sweep (python -m train -m sweep=demo)", ["", "value"], [
            ["seconds", s["seconds"]], ["trials", s["trials"]], ["best trial's judge fidelity", s["best_judge_fidelity"]],
            ["best trial's fidelity x editability", s["best_judge_product"]]])
    if "landscape" in r:
        ls = r["landscape"]
        table(f"Landscape: {ls['configs']} random configurations ({ls['seconds']:.0f} s)", ["", "fidelity x editability", "goal"], [
            ["best", ls["best"], ">= 0.7"], ["median", ls["median"], ""], ["worst", ls["worst"], "<= 0.2"],
            ["the objective's pick", ls["objective_pick_judge"], ""],
            ["regret (judge best - objective's pick)", ls["judge_best"] - ls["objective_pick_judge"], ""]])
        rows = [[s, ls["correlation"][s], ls["early"]["25%"][s], ls["early"]["50%"][s]] for s in SCORES]
        table("Spearman with the final judge score (val_loss: lower is better)",
              ["score", "final", "at 25% of steps", "at 50% of steps"], rows)


if __name__ == "__main__":
    main()
