"""The local backend vs Ray, side by side in one run: the same ``sweep=demo`` study on 2 slots.

Each arm is the real SweepController on conf/sweep/demo.yaml as ``make sweep``
runs it (8 trials, 80 steps, median pruning on val_loss, TPE seed 0), the tiny
model built once into a temp dir, one cache (latents, text embeddings) warmed
by an untimed one-trial sweep before the arms. The local arm spawns worker
processes; the Ray arm joins a Ray instance started here beforehand, bound to
127.0.0.1 (its start-up is timed apart), and creates one actor per slot.

    python bench/sweep_backends.py [--trials 8] [--slots 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray: no usage stats, every server on loopback (as the tests run it).
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})

from bench.sweep_overhead import bench_run, cpu_count, demo_overrides, demo_sweeper_section, say  # noqa: E402


@dataclass
class Arm:
    backend: str
    round: int
    wall: float  # SweepController.run(): pool start -> last outcome -> results written
    utilization: float  # the pool's own slot_utilization
    to_first_trial: float  # run() start -> the first trial's start in the study (workers or actors coming up)
    outcomes: list
    study: object


def run_arm(backend: str, round_: int, args, work: Path, base: list[str]) -> Arm:
    from sweeper.controller import SweepController
    from sweeper.hydra_sweeper import sweeper_config

    kwargs = {
        **demo_sweeper_section(),
        "n_trials": args.trials,
        "cpu_slots": args.slots,
        "gpus": [],  # CPU slots on any machine: both arms on the same footing
        "backend": backend,
        "ray": {"max_slots": args.slots},
    }
    sweep_dir = work / f"{backend}-{round_}"
    controller = SweepController(sweeper_config(kwargs), base_overrides=base, sweep_dir=sweep_dir)
    started_wall, started = time.time(), time.monotonic()
    study = controller.run()
    wall = time.monotonic() - started
    first = min(t.datetime_start.timestamp() for t in study.trials if t.datetime_start)
    return Arm(backend, round_, wall, controller.utilization, first - started_wall, list(controller.outcomes), study)


def warm_up(work: Path, base: list[str]) -> None:
    """One untimed one-trial sweep: latents and text embeddings cached, files in the OS cache."""
    from sweeper.controller import SweepController
    from sweeper.hydra_sweeper import sweeper_config

    kwargs = {**demo_sweeper_section(), "n_trials": 1, "cpu_slots": 1, "gpus": [], "study_name": "warmup"}
    controller = SweepController(sweeper_config(kwargs), base_overrides=base, sweep_dir=work / "warmup")
    controller.run()
    if [o.state for o in controller.outcomes] != ["COMPLETE"]:
        raise SystemExit(f"warm-up trial did not complete: {controller.outcomes}")


def start_ray(slots: int) -> float:
    import ray

    started = time.monotonic()
    ray.init(
        _node_ip_address="127.0.0.1",
        num_cpus=slots,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return time.monotonic() - started


def table(arms: list[Arm], args, ray_start: float) -> Table:
    out = Table(
        title=f"sweep=demo on the local backend vs Ray ({args.trials} trials, {args.slots} slots, "
        f"{cpu_count()} CPU cores; Ray instance started beforehand in {ray_start:.1f} s)"
    )
    for col in ("backend", "round", "C/P/F", "wall s", "vs local", "slot busy", "to 1st trial s", "trial s",
                "train steps", "best val_loss"):  # fmt: skip
        out.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
    local = {a.round: a.wall for a in arms if a.backend == "local"}
    for a in arms:
        states = [o.state for o in a.outcomes]
        complete = [t.value for t in a.study.trials if t.value is not None]
        out.add_row(
            a.backend,
            str(a.round),
            "/".join(str(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL")),
            f"{a.wall:.1f}",
            f"{a.wall / local[a.round]:.2f}x" if a.round in local else "-",
            f"{a.utilization:.0%}",
            f"{a.to_first_trial:.1f}",
            f"{statistics.mean(o.seconds for o in a.outcomes):.1f}" if a.outcomes else "-",
            str(sum(o.step for o in a.outcomes)),
            f"{min(complete):.5f}" if complete else "-",
        )
    return out


NOTES = """\
C/P/F: trials complete / pruned / failed (median pruning makes the counts depend on the values; the sampled
  params match across arms while the outcomes do). wall s: SweepController.run(), from starting the pool
  (spawning the local workers, or creating the actors and checking the shared paths) to the results file.
vs local: wall / the local arm's wall in the same round. slot busy: the pool's slot_utilization (submit ->
  outcome over slots x time since the pool started). to 1st trial s: run() start -> the first trial's start
  in the study (asked when a slot is free: a local slot takes its trial while its process starts, a Ray slot
  once its actor answers). trial s: the workers' run_trial seconds, mean. train steps: optimizer steps run."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="n_trials of each arm (demo: 8)")
    parser.add_argument("--slots", type=int, default=2, help="slots of each arm (demo: 2 CPU slots)")
    parser.add_argument("--rounds", type=int, default=1, help="local then Ray, this many times")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models, studies and logs here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bench_started, load_at_start = time.monotonic(), os.getloadavg()[0]
    arms: list[Arm] = []
    with bench_run(args.workdir, "sweep-backends-", "workers' and Ray's output") as (work, _):
        base = demo_overrides(work)
        say("warm-up: one untimed one-trial sweep (latents, text embeddings, file cache)")
        warm_up(work, base)
        say("starting a Ray instance on 127.0.0.1")
        ray_start = start_ray(args.slots)
        try:
            for round_ in range(1, args.rounds + 1):
                for backend in ("local", "ray"):
                    say(f"  round {round_}: {backend}, {args.trials} trials on {args.slots} slots")
                    arms.append(run_arm(backend, round_, args, work, base))
        finally:
            import ray

            ray.shutdown()
    console = Console(width=140)
    console.print(table(arms, args, ray_start))
    console.print(NOTES)
    console.print(
        f"\nwhole bench {time.monotonic() - bench_started:.0f} s; 1-min load average {load_at_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (this bench's own processes count too)"
    )


if __name__ == "__main__":
    main()
