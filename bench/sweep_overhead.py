"""Sweep overhead, side by side in one run: where a sweep's slot time goes.

1. Persistent workers (sweeper.slots.pool.SlotPool: one process per slot, base model
   loaded once) vs a fresh ``python -c`` process per trial (interpreter start,
   imports, model load every trial), on the same trials: the same sampled
   overrides of conf/sweep/demo.yaml, the same driver loop, the same study
   storage, no pruning (so both arms train exactly the same steps).
2. Median pruning vs no pruning at an equal trial count: the real
   sweeper.controller.SweepController runs the demo study twice with the same
   TPE seed, once with MedianPruner and once with NopPruner.

Both parts use the tiny model (built once into a temp dir) and one shared cache
(latents, text embeddings, demo CLIP) warmed by an untimed trial before any arm.
Workers' and children's stderr (progress bars, logs) go to a log file.

    python bench/sweep_overhead.py [--trials 8] [--steps 20] [--slots 2]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

NO_PRUNING = {"_target_": "optuna.pruners.NopPruner"}
MARKER = b"@@bench"

# One trial in a fresh interpreter, as a process-per-trial launcher would run it:
# the same steps as sweeper.slots.worker.worker_main for one job, then exit.
CHILD = r"""
import os, pickle, sys
job_path, out_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
torch.set_num_threads(threads)
from sweeper.slots.worker import run_trial
with open(job_path, "rb") as f:
    job = pickle.load(f)
seen = []
def progress(step, force=False):
    if not seen:
        seen.append(step)
        sys.stdout.write(f"@@bench first_step {step}\n")
        sys.stdout.flush()
outcome = run_trial(job, {}, progress)
with open(out_path + ".tmp", "wb") as f:
    pickle.dump(outcome, f)
os.replace(out_path + ".tmp", out_path)
"""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 (this process and every worker or child it starts) to ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def bench_workdir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (created if missing, left in place), else a temporary dir removed afterwards."""
    if keep is not None:
        keep = keep.resolve()
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        yield Path(work)


@contextlib.contextmanager
def bench_run(keep: Path | None, prefix: str, logged: str) -> Iterator[tuple[Path, Path]]:
    """(work dir, log file): stderr of this process and its workers goes to the log; a failure shows its tail."""
    with bench_workdir(keep, prefix) as work:
        log_path = work / "bench.log"
        say(f"work dir {work}; {logged} in {log_path}")
        try:
            with stderr_to(log_path):
                yield work, log_path
        except BaseException:
            lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
            print("\n".join(lines[-40:]), file=sys.stderr)
            raise


def demo_overrides(work: Path) -> list[str]:
    """The tiny model built into ``work`` and the overrides of ``sweep=demo`` on it (one cache, no logger)."""
    import optuna

    from train.models.tiny import build_tiny_sd15

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model = build_tiny_sd15(work / "models" / "tiny-sd15")
    return ["sweep=demo", f"model.path={model}", f"paths.cache_dir={work / 'cache'}", "logger=none"]


# --------------------------------------------------------------- fresh runner
@dataclass
class _Child:
    process: subprocess.Popen
    job: object
    started: float
    out_path: Path
    buffer: bytes = b""
    step: int = 0


class FreshProcessRunner:
    """SlotPool's interface (idle_slots/submit/poll/shutdown), one new interpreter per trial."""

    def __init__(self, slots: int, work: Path, log_path: Path):
        self.slots: list[_Child | None] = [None] * slots
        self.work, self.log_path = work, log_path
        self.work.mkdir(parents=True, exist_ok=True)
        self.threads = max(1, cpu_count() // slots)  # what SlotPool gives each worker
        self.selector = selectors.DefaultSelector()

    def start(self) -> None:
        pass  # nothing to start ahead of the trials

    def idle_slots(self) -> list[int]:
        return [i for i, child in enumerate(self.slots) if child is None]

    def submit(self, slot: int, job) -> None:
        job_path = self.work / f"job{job.trial_number}.pkl"
        out_path = self.work / f"outcome{job.trial_number}.pkl"
        job_path.write_bytes(pickle.dumps(job))
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(job_path), str(out_path), str(self.threads)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        os.set_blocking(process.stdout.fileno(), False)
        self.slots[slot] = _Child(process, job, started, out_path)
        self.selector.register(process.stdout, selectors.EVENT_READ, slot)

    def poll(self, timeout: float) -> list[tuple[int, str, object]]:
        events: list[tuple[int, str, object]] = []
        for key, _ in self.selector.select(timeout):
            slot = key.data
            child = self.slots[slot]
            chunk = os.read(key.fd, 65536)
            if chunk:
                child.buffer += chunk
                *lines, child.buffer = child.buffer.split(b"\n")
                for line in lines:
                    if line.startswith(MARKER + b" first_step"):
                        child.step = int(line.split()[-1])
                        events.append((slot, "progress", (child.job.trial_number, child.step)))
                continue
            events.append((slot, "done", self._reap(slot)))  # EOF: the child is exiting
        return events

    def _reap(self, slot: int):
        from sweeper.slots.worker import TrialOutcome

        child = self.slots[slot]
        self.selector.unregister(child.process.stdout)
        child.process.stdout.close()
        code = child.process.wait()
        self.slots[slot] = None
        if child.out_path.exists():
            return pickle.loads(child.out_path.read_bytes())
        seconds = time.monotonic() - child.started
        reason = f"child exited with code {code} before writing its outcome (see {self.log_path})"
        return TrialOutcome(child.job.trial_number, "FAIL", None, reason, seconds, 0.0, child.step)

    def shutdown(self) -> None:
        for child in self.slots:
            if child is not None:
                child.process.kill()
                child.process.wait()
        self.selector.close()


# ---------------------------------------------------------------- part 1
@dataclass
class ArmResult:
    name: str
    slots: int
    wall: float = 0.0
    submitted: dict[int, float] = field(default_factory=dict)
    first_step: dict[int, float] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)
    outcomes: dict[int, object] = field(default_factory=dict)
    first_on_slot: set[int] = field(default_factory=set)  # trials that were their slot's first


def drive(name: str, runner, study, storage_url: str, trial_overrides: list[list[str]], work: Path) -> ArmResult:
    """Feed the trials to idle slots and tell each outcome, timing submit, first step and done per trial."""
    from sweeper.slots.worker import TrialJob

    result = ArmResult(name, 0)
    pending = list(trial_overrides)
    used_slots: set[int] = set()
    asked: dict[int, object] = {}
    started = time.monotonic()
    runner.start()
    result.slots = len(runner.idle_slots())
    try:
        while pending or len(result.outcomes) < len(trial_overrides):
            for slot in runner.idle_slots():
                if not pending:
                    break
                trial = study.ask()
                asked[trial.number] = trial
                job = TrialJob(
                    trial_number=trial.number,
                    trial_id=trial._trial_id,
                    study_name=study.study_name,
                    storage_url=storage_url,
                    overrides=pending.pop(0),
                    run_dir=str(work / name / str(trial.number)),
                    report_metric="val_loss",
                    pruner=NO_PRUNING,
                )
                if slot not in used_slots:
                    used_slots.add(slot)
                    result.first_on_slot.add(trial.number)
                result.submitted[trial.number] = time.monotonic()
                runner.submit(slot, job)
            for _slot, kind, payload in runner.poll(timeout=0.5):
                now = time.monotonic()
                if kind == "progress":
                    result.first_step.setdefault(payload[0], now)
                elif kind == "done":
                    result.finished[payload.trial_number] = now
                    result.outcomes[payload.trial_number] = payload
                    tell(study, asked[payload.trial_number], payload)
        result.wall = max(result.finished.values()) - started
    finally:
        runner.shutdown()
    return result


def tell(study, trial, outcome) -> None:
    from optuna.trial import TrialState

    if outcome.state == "COMPLETE" and outcome.values:
        study.tell(trial, outcome.values[0])
    else:
        study.tell(trial, state=TrialState.PRUNED if outcome.state == "PRUNED" else TrialState.FAIL)


def sample_overrides(space, n: int, seed: int) -> list[list[str]]:
    """n configurations of the demo space, drawn once so both arms train the very same trials."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="minimize")
    return [space.overrides(space.sample(study.ask())) for _ in range(n)]


def new_study(url: str, name: str):
    import optuna

    from sweeper.store.storage import make_storage

    return optuna.create_study(storage=make_storage(url, Path(".")), study_name=name, direction="minimize")


def warm_up(args, work: Path, base: list[str], log_path: Path) -> None:
    """One untimed trial in a fresh process: latents, text embeddings, demo CLIP, and the OS file cache."""
    overrides = [*base, f"train.max_train_steps={args.steps}", f"evaluate.every_n_steps={args.eval_every}"]
    url = f"sqlite:///{work / 'warmup.db'}"
    runner = FreshProcessRunner(1, work / "warmup-jobs", log_path)
    outcome = drive("warmup", runner, new_study(url, "warmup"), url, [overrides], work).outcomes[0]
    if outcome.state != "COMPLETE":
        raise SystemExit(f"warm-up trial did not complete: {outcome.state} {outcome.reason} (log: {log_path})")


def part_one(args, work: Path, base: list[str], log_path: Path) -> list[ArmResult]:
    from sweeper.slots.pool import SlotPool
    from sweeper.space.search_space import parse_search_space

    sweep = demo_sweeper_section()
    space = parse_search_space(sweep["params"], sweep.get("conditional") or [], sweep.get("derived") or {})
    common = [*base, f"train.max_train_steps={args.steps}", f"evaluate.every_n_steps={args.eval_every}"]
    trials = [[*common, *o] for o in sample_overrides(space, args.trials, args.seed)]
    url = f"sqlite:///{work / 'part1.db'}"

    results = []
    say(f"  persistent workers: {args.trials} trials on {args.slots} slots")
    pool = SlotPool([None] * args.slots)
    results.append(drive("persistent", pool, new_study(url, "persistent"), url, trials, work))
    say(f"  fresh process per trial: {args.trials} trials on {args.slots} slots")
    fresh = FreshProcessRunner(args.slots, work / "fresh-jobs", log_path)
    results.append(drive("fresh", fresh, new_study(url, "fresh"), url, trials, work))
    return results


# ---------------------------------------------------------------- part 2
@dataclass
class PruneResult:
    name: str
    wall: float
    utilization: float
    outcomes: list
    study: object


def demo_sweeper_section() -> dict:
    from omegaconf import OmegaConf

    demo = OmegaConf.load(CONF_DIR / "sweep" / "demo.yaml")
    return OmegaConf.to_container(demo.hydra.sweeper, resolve=True)


def part_two(args, work: Path, base: list[str]) -> list[PruneResult]:
    from sweeper.controller import SweepController
    from sweeper.hydra_sweeper import sweeper_config

    overrides = [*base, f"train.max_train_steps={args.prune_steps}", f"evaluate.every_n_steps={args.eval_every}"]
    warmup = args.eval_every if args.warmup_steps is None else args.warmup_steps
    pruners = {
        "NopPruner": NO_PRUNING,
        "MedianPruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": warmup},
    }
    results = []
    for name, pruner in pruners.items():
        say(f"  {name}: {args.prune_trials} trials of {args.prune_steps} steps on {args.slots} slots")
        kwargs = {
            **demo_sweeper_section(),
            "study_name": "demo",
            "n_trials": args.prune_trials,
            "cpu_slots": args.slots,
            "gpus": [],  # CPU slots even on a GPU machine: the bench compares on the same footing
            "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": args.seed},
            "pruner": pruner,
        }
        controller = SweepController(
            sweeper_config(kwargs), base_overrides=overrides, sweep_dir=work / f"part2-{name}"
        )
        started = time.monotonic()
        study = controller.run()
        wall = time.monotonic() - started
        results.append(PruneResult(name, wall, controller.utilization, list(controller.outcomes), study))
    return results


# ------------------------------------------------------------------ tables
def objective_fix(base: list[str]) -> list[str]:
    """Overrides that leave val_loss alone in the objective (demo.yaml's metrics merge into evaluate/demo's)."""
    from hydra import compose, initialize_config_dir

    from train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=base)
    metrics = dict(cfg.evaluate.objective.metrics)
    if "val_loss" not in metrics:
        raise SystemExit(f"the demo objective has no val_loss: {metrics}")
    # A zero weight already switches a metric off (evaluate.objective.used_metrics).
    return [f"~evaluate.objective.metrics.{name}" for name, w in metrics.items() if name != "val_loss" and w != 0]


def fmt_mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" if values else "-"


def overhead_table(results: list[ArmResult], args) -> Table:
    table = Table(
        title=f"Persistent workers vs a fresh process per trial ({args.trials} trials, {args.steps} steps, "
        f"eval every {args.eval_every}, {args.slots} slots, {cpu_count()} CPU cores)"
    )
    columns = ("arm", "C/P/F", "wall s", "trials/hour", "slot busy", "past start-up", "start-up s",
               "first on slot", "later", "trial s")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    base_rate = None
    for r in results:
        states = [o.state for o in r.outcomes.values()]
        counts = "/".join(str(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL"))
        slot_time = r.slots * r.wall
        busy = sum(r.finished[n] - r.submitted[n] for n in r.finished)
        startup = {n: r.first_step[n] - r.submitted[n] for n in r.first_step}
        past_startup = sum(r.finished[n] - r.first_step[n] for n in r.first_step)
        rate = states.count("COMPLETE") / r.wall * 3600
        base_rate = base_rate or rate
        table.add_row(
            "persistent (SlotPool)" if r.name == "persistent" else "fresh process/trial",
            counts,
            f"{r.wall:.1f}",
            f"{rate:.0f} ({rate / base_rate:.2f}x)",
            f"{busy / slot_time:.0%}",
            f"{past_startup / slot_time:.0%}",
            fmt_mean(list(startup.values())),
            fmt_mean([s for n, s in startup.items() if n in r.first_on_slot]),
            fmt_mean([s for n, s in startup.items() if n not in r.first_on_slot]),
            fmt_mean([r.finished[n] - r.submitted[n] for n in r.finished]),
        )
    return table


OVERHEAD_NOTES = """\
C/P/F: trials complete / pruned / failed. wall s: from starting the arm (spawning the pool; nothing for the
  fresh arm) to the last outcome. trials/hour: complete trials / wall (x: vs the first row).
slot busy: sum over trials of submit -> outcome, / (slots x wall): SlotPool.utilization's definition, so a fresh
  process's start-up counts as busy. past start-up: the same from the trial's first training step -> outcome,
  i.e. the share of slot time spent training and evaluating.
start-up: job submit -> the controller receives the trial's first optimizer-step message (step 1 done). It includes
  the interpreter start and imports (fresh process; and the first trial on each persistent slot, whose worker
  is spawned at pool start), unpickling the job, composing the Hydra config, opening the study storage, loading
  or copying the base model, LoRA and data setup, and that first step; mean over trials. first on slot / later:
  the mean start-up of each slot's first trial / of the rest. trial s: submit -> outcome, mean."""


def prune_table(results: list[PruneResult], args) -> Table:
    table = Table(
        title=f"Median pruning vs no pruning ({args.prune_trials} trials, {args.prune_steps} steps, "
        f"eval every {args.eval_every}, {args.slots} slots, TPE seed {args.seed})"
    )
    columns = ("pruner", "C/P/F", "trial s", "later trial s", "s/trial C|P", "train steps", "evals", "wall s",
               "slot busy", "best val_loss", "pruned")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "pruner" else "right", no_wrap=True)
    base: dict[str, float] = {}
    for r in results:
        states = [o.state for o in r.outcomes]
        counts = "/".join(str(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL"))
        # The controller fills every slot at once: trials 0..slots-1 are each worker's first.
        later = [o for o in r.outcomes if o.trial_number >= args.slots]
        totals = {
            "seconds": sum(o.seconds for o in r.outcomes),
            "later": sum(o.seconds for o in later),
            "steps": sum(o.step for o in r.outcomes),
        }
        for key, value in totals.items():
            base.setdefault(key, value)
        ratio = {key: f"{value:.1f} ({value / base[key]:.2f}x)" if base[key] else "-" for key, value in totals.items()}
        per_state = [fmt_mean([o.seconds for o in later if o.state == state]) for state in ("COMPLETE", "PRUNED")]
        evals = sum(len(t.intermediate_values) for t in r.study.trials)
        complete = [t for t in r.study.trials if t.value is not None]
        best = min(complete, key=lambda t: t.value) if complete else None
        pruned_at = [o.step for o in r.outcomes if o.state == "PRUNED"]
        table.add_row(
            r.name,
            counts,
            ratio["seconds"],
            ratio["later"],
            " | ".join(per_state),
            f"{totals['steps']} ({totals['steps'] / base['steps']:.2f}x)",
            str(evals),
            f"{r.wall:.1f}",
            f"{r.utilization:.0%}",
            f"{best.value:.5f} (#{best.number})" if best else "-",
            ", ".join(f"{step} x{n}" for step, n in sorted(Counter(pruned_at).items())) or "-",
        )
    return table


def prune_notes(results: list[PruneResult], args, warmup: int) -> str:
    params = [[t.params for t in sorted(r.study.trials, key=lambda t: t.number)] for r in results]
    same = "yes" if all(p == params[0] for p in params) else "no (the samplers saw different outcomes)"
    return f"""\
Both arms: the real SweepController on the demo space (conf/sweep/demo.yaml), report val_loss, minimize; each trial
  is told its best val_loss over its evaluations. MedianPruner(n_startup_trials=2, n_warmup_steps={warmup}); NopPruner
  never prunes. Same sampled params in both arms, trial by trial: {same}.
trial s: sum of the workers' run_trial seconds (compose -> outcome), i.e. compute spent. Each worker's first trial
  also pays its heavy imports (train.recipe: diffusers, ...) and the base model load, which is noisy, so later
  trial s sums trials {args.slots}.. only; s/trial C|P: their mean seconds per complete | pruned trial.
train steps: optimizer steps actually run (a pruned trial stops at the evaluation that pruned it). evals: evaluations
  reported to the study. slot busy: SlotPool's utilization over the run. best val_loss: the study's best value
  (#trial). pruned: step x number of trials pruned there. (x): vs the first row."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="trials per arm of part 1")
    parser.add_argument("--steps", type=int, default=20, help="training steps per trial in part 1")
    parser.add_argument("--slots", type=int, default=2, help="parallel trials (CPU slots)")
    parser.add_argument("--eval-every", type=int, default=10, help="evaluate (and report val_loss) every N steps")
    parser.add_argument("--prune-trials", type=int, default=10, help="trials per arm of part 2")
    parser.add_argument("--prune-steps", type=int, default=30, help="training steps per trial in part 2")
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="MedianPruner n_warmup_steps (default: --eval-every)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the part 1 draws and of part 2's TPE sampler")
    parser.add_argument("--skip-overhead", action="store_true", help="skip part 1")
    parser.add_argument("--skip-pruning", action="store_true", help="skip part 2")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models, studies and logs here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bench_started, load_at_start = time.monotonic(), os.getloadavg()[0]

    with bench_run(args.workdir, "sweep-overhead-", "workers' output") as (work, log_path):
        base = demo_overrides(work)
        fix = objective_fix(base)
        base += fix
        say("warm-up: one untimed trial in a fresh process (latents, text embeddings, demo CLIP, file cache)")
        warm_up(args, work, base, log_path)
        overhead = []
        if not args.skip_overhead:
            say("part 1: persistent workers vs a fresh process per trial")
            overhead = part_one(args, work, base, log_path)
        pruning = []
        if not args.skip_pruning:
            say("part 2: median pruning vs no pruning")
            pruning = part_two(args, work, base)

    console = Console(width=140)
    if fix:
        console.print(
            "note: demo.yaml's objective.metrics merges into evaluate/demo's, so the demo objective also weighs "
            f"{', '.join(f.rsplit('.', 1)[1] for f in fix)}; the bench drops it: {' '.join(fix)}\n"
        )
    if overhead:
        console.print(overhead_table(overhead, args))
        console.print(OVERHEAD_NOTES + "\n")
    if pruning:
        console.print(prune_table(pruning, args))
        warmup = args.eval_every if args.warmup_steps is None else args.warmup_steps
        console.print(prune_notes(pruning, args, warmup))
    import torch

    console.print(
        f"\ntorch {torch.__version__}, {cpu_count()} CPU cores, {max(1, cpu_count() // args.slots)} torch thread(s) "
        f"per slot; whole bench {time.monotonic() - bench_started:.0f} s\n1-min load average {load_at_start:.2f} "
        f"at start, {os.getloadavg()[0]:.2f} at end: it counts this bench's own processes too; other work on the "
        "host skews every timing"
    )


if __name__ == "__main__":
    main()
