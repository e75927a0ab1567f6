"""Several controllers on one PostgreSQL study, side by side in one run: 1, then 2, then 4 controllers.

What is measured is the sweep machinery (budget, study lock, sampler streams,
duplicate check, heartbeats), so the trials are synthetic: each sleeps and
reports (``hydra.sweeper.synthetic_trial``) instead of training. Each
controller is a separate ``python -m train -m`` process with one slot, as one
host would be, all on the bare ``postgresql://`` URL a user writes. Per arm:
trials/hour over the study's own span (first trial start to last trial end,
so process start-up is left out) and over the wall time, both against one
controller; repeated configurations (goal 0); and the exact total.

    python bench/sweep_controllers.py [--trials 24] [--seconds 4] [--arms 1,2,4] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def run_arm(args, controllers: int, model: Path, work: Path, env: dict) -> dict:
    import optuna

    from sweeper.store.budget import counts_against_budget
    from sweeper.store.duplicates import repeated_configurations
    from sweeper.store.storage import make_storage

    name = f"bench-controllers-{controllers}-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable, "-m", "train", "-m", "sweep=demo", f"model.path={model}", "logger=none",
        f"hydra.sweeper.storage={args.url}", f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={args.trials}", "hydra.sweeper.cpu_slots=1",
        f"hydra.sweeper.synthetic_trial={{seconds:{args.seconds},steps:4}}",
    ]  # fmt: skip
    started = time.monotonic()
    procs = []
    for host in range(controllers):
        log = open(work / f"{name}-host{host}.log", "wb")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen([*command, f"hydra.sweep.dir={work / name / f'host{host}'}"], cwd=ROOT,
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))  # fmt: skip
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    wall = time.monotonic() - started
    storage = make_storage(args.url, work)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs and t.state.name == "COMPLETE"]
    starts = [t.datetime_start.timestamp() for t in trained if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trained if t.datetime_complete]
    span = max(ends) - min(starts) if starts and ends else float("nan")
    hosts = {Path(t.user_attrs.get("run_dir", "")).parent.name for t in trained}
    result = {
        "controllers": controllers,
        "exit": ",".join(map(str, codes)),
        "states": {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
        "total": sum(counts_against_budget(t) for t in trials),
        "repeats": repeated_configurations(trials),
        "span": span,
        "wall": wall,
        "per_hour_span": len(trained) / span * 3600 if span == span else float("nan"),
        "per_hour_wall": len(trained) / wall * 3600,
        "hosts": len(hosts),
    }
    optuna.delete_study(study_name=name, storage=storage)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=4.0, help="each synthetic trial's sleep")
    parser.add_argument("--arms", default="1,2,4")
    parser.add_argument("--url", default=os.environ.get("SWEEPER_BENCH_POSTGRES", DEFAULT_URL))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sweep-controllers-"))
    env = {**os.environ, "LORA_SWEEP_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}

    from rich.console import Console
    from rich.table import Table

    from sweeper.store.storage import mask_url
    from train.models.tiny import build_tiny_sd15

    model = build_tiny_sd15(work / "tiny-sd15")
    print(f"work dir {work}; study storage {mask_url(args.url)}", flush=True)
    results = []
    for controllers in (int(a) for a in args.arms.split(",")):
        print(f"  {controllers} controller(s), {args.trials} synthetic trials of {args.seconds:g} s", flush=True)
        results.append(run_arm(args, controllers, model, work, env))
    base = results[0]
    table = Table(title=f"controllers on one PostgreSQL study: synthetic trials (sleep {args.seconds:g} s and report)")
    columns = (
        "controllers", "exit codes", "C/P/F/RUNNING", "total / n_trials", "repeated configs", "hosts used",
        "span s", "trials/hour (span)", "wall s", "trials/hour (wall)",
    )  # fmt: skip
    for column in columns:
        table.add_column(column)
    for r in results:
        s = r["states"]
        table.add_row(
            str(r["controllers"]),
            r["exit"],
            f"{s['COMPLETE']}/{s['PRUNED']}/{s['FAIL']}/{s['RUNNING']}",
            f"{r['total']}/{args.trials}",
            str(r["repeats"]),
            str(r["hosts"]),
            f"{r['span']:.1f}",
            f"{r['per_hour_span']:.0f} ({r['per_hour_span'] / base['per_hour_span']:.2f}x)",
            f"{r['wall']:.1f}",
            f"{r['per_hour_wall']:.0f} ({r['per_hour_wall'] / base['per_hour_wall']:.2f}x)",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
