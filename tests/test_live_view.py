"""What a sweep shows while it runs: one live view on a terminal, one line per trial event elsewhere.

Workers write their progress to their trial's trial.log, never to the controller's terminal.
The terminal test drives a real terminal (tmux) and reads the screen with `capture-pane`.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from tests.sweeps import ROOT, load, run_sweep, sweep_args, wait_for

ESCAPES = re.compile(r"\x1b\[|\r")
TQDM_FRAGMENTS = ("%|", "it/s]", "s/it]")  # what a tqdm bar leaves on a line, however it is cut


def _text(renderable, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{text}")


def _header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if "┃" in line)
    return [c.strip() for c in line.split("┃")[1:-1]]


@pytest.fixture
def study() -> optuna.Study:
    """A study in memory: a complete, a pruned and a failed trial, and one running with two reported values."""
    study = optuna.create_study(study_name="view", direction="minimize")
    lr = {"optimizer.learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}
    study.add_trial(
        create_trial(
            value=1.25, params={"optimizer.learning_rate": 1e-3}, distributions=lr, user_attrs={"best": {"step": 60}}
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"optimizer.learning_rate": 1e-2},
            distributions=lr,
            intermediate_values={20: 2.5},
            user_attrs={"prune_reason": "pruned at step 20"},
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"optimizer.learning_rate": 2e-3},
            distributions=lr,
            user_attrs={"fail_reason": "CUDA out of memory at step 3"},
        )
    )
    running = study.ask(lr)
    running.report(1.5, 20)
    running.report(1.375, 40)
    return study


def test_live_view_shows_each_slot_and_a_study_table_of_finished_trials(study):
    from sweeper.report.live_table import slots_table, study_table

    trials = study.get_trials(deepcopy=False)
    running = {3: SimpleNamespace(slot=1, step=40, total=80, rate=8.0, values={"optimizer.learning_rate": 0.0004})}
    slots = _text(slots_table(running, 2, trials))
    assert _header(slots) == ["slot", "trial", "step", "it/s", "ETA", "last score", "params"]
    assert _row(slots, "1") == ["1", "3", "40/80", "8.0", "0:05", "1.375", "optimizer.learning_rate=0.0004"]
    assert _row(slots, "0")[1:] == ["idle", "", "", "", "", ""]

    table = _text(study_table("view", trials))
    assert _header(table) == ["trial", "state", "value", "best step", "params", "reason"]  # no live-only columns
    assert _row(table, "0") == ["0", "COMPLETE", "1.25", "60", "optimizer.learning_rate=0.001", ""]
    assert _row(table, "1") == ["1", "PRUNED", "-", "", "optimizer.learning_rate=0.01", "pruned at step 20"]
    assert _row(table, "2")[:2] == ["2", "FAIL"] and _row(table, "2")[-1] == "CUDA out of memory at step 3"
    assert "RUNNING" not in table  # a running trial is in the slots panel, not among the finished ones


def test_event_lines_say_what_happened_to_each_trial(study):
    from sweeper.report.events import finished_line, started_line

    complete, pruned, failed, _ = study.get_trials(deepcopy=False)
    assert started_line(3, 1, {"network.dim": 4}) == "trial 3 started on slot 1: network.dim=4"
    assert finished_line(complete, 80) == "trial 0 COMPLETE value 1.25 (best step 60)"
    assert finished_line(pruned, 20) == "trial 1 PRUNED at step 20: pruned at step 20"
    assert finished_line(failed, 3) == "trial 2 FAIL: CUDA out of memory at step 3"


class _Pipe:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def test_worker_progress_carries_the_total_and_the_rate_since_the_first_step(monkeypatch):
    from sweeper.slots import worker

    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr(worker.time, "monotonic", lambda: next(clock))
    pipe = _Pipe()
    progress = worker._ProgressSender(pipe, 7, os.getppid())
    progress.set_total(5)
    progress(1)
    progress(3)  # 2 steps in 1 s
    progress(5)  # the last step is always sent
    assert pipe.sent == [("progress", 7, 1, 5, None), ("progress", 7, 3, 5, 2.0), ("progress", 7, 5, 5, 2.0)]


def test_a_trials_output_goes_to_its_trial_log_down_to_the_file_descriptors(tmp_path):
    from sweeper.slots.worker import output_to

    log_file = tmp_path / "7" / "trial.log"
    with output_to(log_file):
        print("from python", file=sys.__stderr__, flush=True)  # a worker's sys.stderr (pytest replaces sys.stderr)
        os.write(1, b"from C code\n")
    os.write(2, b"after the trial\n")
    assert log_file.read_text() == "from python\nfrom C code\n"


def test_without_a_terminal_training_progress_is_log_lines(tmp_path, caplog):
    from train.run_log import RunLog

    caplog.set_level("INFO", logger="train.run_log")
    with RunLog(tmp_path, logger=None).progress("training", total=3) as advance:  # pytest's stderr is no terminal
        for _ in range(3):
            advance(1, loss=0.5)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["training: 3/3"]
    assert caplog.records[-1].getMessage().endswith("it/s) loss=0.5")


# ---------------------------------------------------------------- real sweeps


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("live-view-cache")  # latents and text embeddings: shared by both sweeps


def _progress_lines(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "trial.log").read_text().splitlines() if "training: " in line]


def test_without_a_terminal_each_trial_event_is_one_plain_line(tiny_model_dir, tmp_path, cache):
    sweep_dir = tmp_path / "sweep"
    faults = "[{trial:1,kind:nan,at_step:2},{trial:2,kind:error,at_step:2}]"
    args = sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=3", f"hydra.sweeper.fault_injection={faults}")
    result = run_sweep(args, tmp_path, cache)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]

    assert not ESCAPES.search(output), "no redraws or escape codes without a terminal"
    assert not [f for f in TQDM_FRAGMENTS if f in output], "a worker's progress bar reached the controller's output"
    lines = result.stderr.splitlines()
    for number in range(3):
        assert sum(line.startswith(f"trial {number} started on slot ") for line in lines) == 1, result.stderr
    finished = sorted(line for line in lines if re.match(r"trial \d (COMPLETE|PRUNED|FAIL)", line))
    assert len(finished) == 3, result.stderr
    assert re.fullmatch(r"trial 0 COMPLETE value [0-9.]+ \(best step 6\)", finished[0]), finished
    assert finished[1:] == [
        "trial 1 PRUNED at step 2: diverged: loss is nan at step 3",
        "trial 2 FAIL: RuntimeError: injected error",
    ]
    assert any(line.startswith("best trial 0: value ") for line in lines), result.stderr

    # The workers' progress went to each trial's own log: trial 0 to its last step, the others until they ended.
    assert "training: 6/6" in _progress_lines(sweep_dir / "0")[-1]
    for number in (1, 2):
        assert _progress_lines(sweep_dir / str(number)), (sweep_dir / str(number) / "trial.log").read_text()


# ------------------------------------------------------------- a real terminal

SLOTS_HEADER = re.compile(r"┃\s*slot\s*┃\s*trial\s*┃\s*step\s*┃\s*it/s\s*┃\s*ETA\s*┃")
STUDY_TITLE = re.compile(r"^\s*study demo\s*$", re.MULTILINE)  # the study table's title, centred above it
STUDY_HEADER = re.compile(r"┃\s*trial\s*┃\s*state\s*┃\s*value\s*┃\s*best step\s*┃")


def _tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":  # in CI a missing terminal is a broken pipeline
            pytest.fail("CI=true but tmux is not installed (apt-get install tmux)", pytrace=False)
        pytest.skip("tmux is not installed (apt-get install tmux): the live view is checked in a real terminal")
    return path


def test_on_a_terminal_the_sweep_is_one_live_view_without_progress_bars(tiny_model_dir, tmp_path, cache):
    tmux = [_tmux(), "-L", f"live-view-{os.getpid()}", "-f", "/dev/null"]  # a private server, no user config
    sweep_dir, done = tmp_path / "sweep", tmp_path / "exit-code"
    env = {"LORA_SWEEP_CACHE": str(cache), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    args = sweep_args(tiny_model_dir, sweep_dir, "hydra.sweeper.n_trials=2")  # one trial per slot
    command = " ".join(
        ["env", *(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.quote(sys.executable), "-m", "train"]
        + [shlex.quote(a) for a in args]
    )
    # The pane stays open after the sweep, so its last screen can be read.
    shell = f"cd {shlex.quote(str(tmp_path))} && {command}; echo $? > {shlex.quote(str(done))}; sleep 600"

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "view"], capture_output=True, text=True).stdout

    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", "view", "-x", "200", "-y", "50", shell], check=True)
        screens = []
        while not done.exists():
            screens.append(screen())
            assert len(screens) < 3000, "the sweep did not end in about 10 minutes:\n" + screens[-1]
            time.sleep(0.2)
        assert wait_for(lambda: done.read_text().strip() != "", timeout=10)
        final = screen()
        assert done.read_text().strip() == "0", final

        for shown in [*screens, final]:
            assert len(SLOTS_HEADER.findall(shown)) <= 1, "the live view was drawn more than once:\n" + shown
            assert len(STUDY_TITLE.findall(shown)) <= 1, "the study table was drawn more than once:\n" + shown
            assert not [f for f in TQDM_FRAGMENTS if f in shown], "a progress bar reached the terminal:\n" + shown
        live = [s for s in screens if SLOTS_HEADER.search(s)]
        assert live, "no screen showed the slots panel:\n" + "\n-----\n".join(screens[-3:])
        assert any(re.search(r"│\s*[01]\s*│\s*\d+\s*│\s*\d+/6\s*│", s) for s in live), "no slot showed a trial's step"

        # The final screen: the study table (no slot/step columns), every trial with its value and best step.
        assert not SLOTS_HEADER.search(final) and len(STUDY_HEADER.findall(final)) == 1, final
        study = load(sweep_dir)
        for trial in study.trials:
            row = re.search(rf"│\s*{trial.number}\s*│\s*COMPLETE\s*│\s*([0-9.]+)\s*│\s*6\s*│", final)
            assert row, f"trial {trial.number} has no finished row with a value and best step:\n{final}"
            assert float(row.group(1)) == pytest.approx(trial.value, rel=1e-3)
        assert re.search(r"best trial \d: value ", final), final
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
