"""Controller SIGKILLs at awkward moments, each followed by an immediate resume; then what the study kept.

One study (``sweep=demo`` on the tiny model: real training, checkpoints every
few steps) is driven by ``python -m train -m`` as a user runs it. N times the
controller process alone is SIGKILLed (its workers must die with it) and the
same command is started again at once, before the dead trials are stale. The
kill moments cycle through:

- random: a uniform delay after start (start-up, pre-flight, mid-step, mid-evaluation);
- after a tell: the moment another trial turns finished in the storage;
- after a recovery: the moment the resumed controller has failed a stale trial;
- at a checkpoint write: the moment a temporary checkpoint file appears in a run dir.

A last run finishes the study. The table: kills done, finished trials lost
(finished when a kill landed, not finished with the same values at the end),
trials left RUNNING, trials beyond n_trials, repeated configurations (trained
twice, retries of one trial aside), orphan processes (a killed controller's
workers still alive 3 s later) and unreadable files (checkpoints, JSON, YAML,
the study). Goal: every kill done, every other column 0.

    python bench/sweep_faults.py [--kills 20] [--trials 80] [--steps 40] [--synthetic] [--seed 0]

``--synthetic`` replaces training by synthetic trials (they sleep and report):
the sweep machinery alone, in a fraction of the time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
MARK = "LORA_SWEEP_BENCH_RUN"  # in each controller's environment, inherited by its workers
KINDS = ("random", "after a tell", "after a recovery", "at a checkpoint write")


def say(text: str) -> None:
    print(text, flush=True)


def sweep_command(args, model: Path, sweep_dir: Path) -> list[str]:
    command = [
        sys.executable, "-m", "train", "-m", "sweep=demo",
        f"model.path={model}", f"hydra.sweep.dir={sweep_dir}", "logger=none",
        f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.cpu_slots={args.slots}",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
        f"hydra.sweeper.sampler.seed={args.seed}",
        f"train.max_train_steps={args.steps}", f"train.save_every_n_steps={max(1, args.steps // 2)}",
        f"evaluate.every_n_steps={max(1, args.steps // 2)}", "evaluate.num_inference_steps=2",
    ]  # fmt: skip
    if args.synthetic:
        command.append("hydra.sweeper.synthetic_trial={seconds:3,steps:4}")
    return command


def trials(sweep_dir: Path) -> list:
    import optuna

    try:
        return optuna.load_study(study_name="demo", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").get_trials()
    except Exception:  # the storage or the study does not exist yet, or is busy for a moment
        return []


def stale(trial) -> bool:
    return str(trial.user_attrs.get("fail_reason", "")).startswith("stale")


def told(trial) -> bool:
    """Finished by a controller's tell (a stale trial's FAIL is a recovery's, not a tell)."""
    return trial.state.is_finished() and not stale(trial)


def checkpoint_writing(sweep_dir: Path) -> bool:
    return any(sweep_dir.glob("*/checkpoints/.*.tmp"))


def wait_for_moment(kind: str, sweep_dir: Path, proc, rng: random.Random, timeout: float, max_delay: float) -> str:
    """Block until the kill moment of ``kind`` (or the timeout: then it is a random moment); returns what hit."""
    deadline = time.monotonic() + timeout
    if kind == "random":
        end = time.monotonic() + rng.uniform(1.0, max_delay)
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        return kind
    finished = sum(told(t) for t in trials(sweep_dir))
    stale_now = sum(stale(t) for t in trials(sweep_dir))
    while time.monotonic() < deadline and proc.poll() is None:
        if kind == "at a checkpoint write":
            if checkpoint_writing(sweep_dir):
                return kind
            time.sleep(0.002)
            continue
        now = trials(sweep_dir)
        if kind == "after a tell" and sum(told(t) for t in now) > finished:
            return kind
        if kind == "after a recovery" and sum(stale(t) for t in now) > stale_now:
            return kind
        time.sleep(0.02)
    return "random (fallback)"


def alive_with_mark(run_id: str) -> list[int]:
    """Processes whose environment carries this controller run's mark (the controller, its workers)."""
    found = []
    needle = f"{MARK}={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def start(command: list[str], env: dict, log: Path, run_id: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env={**env, MARK: run_id}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def unreadable_files(sweep_dir: Path) -> list[str]:
    import optuna
    import yaml
    from safetensors import safe_open

    bad = []
    for path in sorted(sweep_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):  # a stray temporary file is allowed, never a final name
            continue
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text())
            elif path.name == "optuna.db":
                optuna.load_study(study_name="demo", storage=f"sqlite:///{path}").get_trials()
        except Exception as err:  # noqa: BLE001 - any failure to read is what this column counts
            bad.append(f"{path.relative_to(sweep_dir)}: {type(err).__name__}")
    return bad


def counted(trial) -> bool:
    from sweeper.store.budget import counts_against_budget

    return counts_against_budget(trial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--trials", type=int, default=None, help="n_trials (default 4 per kill: outlasts the kills)")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="training steps per trial (checkpoint every half)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic trials: the sweep machinery alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=None, help="random kills: up to this many s after start")
    parser.add_argument("--work", type=Path, default=None, help="work dir (default: a new temp dir)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.trials = args.trials or 4 * args.kills
    if args.max_delay is None:
        args.max_delay = 15.0 if args.synthetic else 40.0
    work = args.work or Path(tempfile.mkdtemp(prefix="sweep-faults-"))
    sweep_dir, log = work / "sweep", work / "controller.log"
    env = {**os.environ, "LORA_SWEEP_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}

    from train.models.tiny import build_tiny_sd15

    model = build_tiny_sd15(work / "tiny-sd15")
    command = sweep_command(args, model, sweep_dir)
    say(f"work dir {work}; controller output in {log}")
    started = time.monotonic()
    hits: Counter = Counter()
    seen_finished: dict[int, tuple] = {}
    orphans = 0
    for kill in range(args.kills):
        kind = KINDS[kill % len(KINDS)]
        if args.synthetic and kind == "at a checkpoint write":
            kind = "random"  # synthetic trials write no checkpoint
        run_id = uuid.uuid4().hex
        proc = start(command, env, log, run_id)
        hit = wait_for_moment(kind, sweep_dir, proc, rng, timeout=45.0, max_delay=args.max_delay)
        if proc.poll() is not None:
            say(f"  kill {kill + 1}: the controller had already exited ({proc.returncode}): the study is done")
            break
        os.kill(proc.pid, signal.SIGKILL)  # the controller alone: its workers must follow it
        proc.wait()
        hits[hit] += 1
        for trial in trials(sweep_dir):
            if trial.state.is_finished():
                seen_finished.setdefault(trial.number, (trial.state, trial.values))
        time.sleep(3.0)
        left = alive_with_mark(run_id)
        orphans += len(left)
        for pid in left:  # so they cannot disturb the next kills' figures
            os.kill(pid, signal.SIGKILL)
        say(f"  kill {kill + 1}/{args.kills} {hit}: {len(seen_finished)} finished so far, {len(left)} orphans")
    final = start(command, env, log, uuid.uuid4().hex)
    final.wait()
    wall = time.monotonic() - started

    end = {t.number: t for t in trials(sweep_dir)}
    lost = sum(
        1
        for number, (state, values) in seen_finished.items()
        if number not in end or end[number].state != state or end[number].values != values
    )
    running = sum(t.state.name == "RUNNING" for t in end.values())
    total = sum(counted(t) for t in end.values())
    bad_files = unreadable_files(sweep_dir)
    from rich.console import Console
    from rich.table import Table

    from sweeper.store.duplicates import repeated_configurations

    title = "synthetic trials (sleep and report)" if args.synthetic else f"tiny-model trials of {args.steps} steps"
    table = Table(title=f"controller SIGKILL + immediate resume, {title}, {args.slots} slots")
    columns = (
        "kills", "finished trials lost", "left RUNNING", "beyond n_trials", "repeated configs",
        "orphan processes", "unreadable files", "final exit", "total / n_trials", "wall s",
    )  # fmt: skip
    for column in columns:
        table.add_column(column)
    table.add_row(
        f"{sum(hits.values())}/{args.kills}",
        str(lost),
        str(running),
        str(max(0, total - args.trials)),
        str(repeated_configurations(list(end.values()))),
        str(orphans),
        str(len(bad_files)),
        str(final.returncode),
        f"{total}/{args.trials}",
        f"{wall:.0f}",
    )
    Console(width=200).print(table)
    say("kill moments: " + ", ".join(f"{n} {kind}" for kind, n in hits.most_common()))
    states = Counter(t.state.name for t in end.values())
    say("study: " + ", ".join(f"{n} {s}" for s, n in states.most_common()) + f"; {len(end)} trials in the storage")
    for line in bad_files[:10]:
        say(f"  unreadable: {line}")


if __name__ == "__main__":
    main()
