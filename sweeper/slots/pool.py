"""The slot pool: one persistent worker process per GPU slot (or CPU slot).

Workers are spawned (never forked: CUDA does not survive a fork) and live for
the whole sweep, so each loads its base model once. The controller submits a
``TrialJob`` to an idle slot and polls for events. A worker that dies mid-trial
(OOM killer, segfault, SIGKILL) becomes a FAIL outcome for its trial and is
replaced at once, so the sweep goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

from sweeper.slots.worker import TrialJob, TrialOutcome, worker_main

log = logging.getLogger(__name__)


def slot_devices(gpus: list[int] | None, trials_per_gpu: int, cpu_slots: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each slot; None marks a CPU slot."""
    if gpus is None:
        import torch

        gpus = list(range(torch.cuda.device_count()))
    if not gpus:
        return [None] * cpu_slots
    # Indices count the GPUs this process sees; map them through its own CUDA_VISIBLE_DEVICES.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else None
    names = [ids[g] if ids else str(g) for g in gpus]
    # Interleaved, so the first trials spread over GPUs before any GPU gets a second one.
    return [name for _ in range(trials_per_gpu) for name in names]


def concurrent_slots(devices: list[str | None], n_jobs: int | None) -> list[str | None]:
    """The slots a sweep uses: ``n_jobs`` (the plugin's concurrent trials) of them, or all when it is null."""
    if n_jobs is None or n_jobs == len(devices):
        return devices
    if n_jobs > len(devices):
        where = "GPU slots (gpus x trials_per_gpu)" if devices[0] is not None else "CPU slots (cpu_slots)"
        log.warning(
            "hydra.sweeper.n_jobs=%d but there are %d %s: %d trials run at once",
            n_jobs,
            len(devices),
            where,
            len(devices),
        )
        return devices
    log.info("hydra.sweeper.n_jobs=%d: %d of the %d slots run trials", n_jobs, n_jobs, len(devices))
    return devices[:n_jobs]


def slot_utilization(busy_seconds: dict[int, float], running_since: list[float], started_at: float | None) -> float:
    """Share of slot time spent running trials since ``started_at`` (running trials count so far)."""
    if started_at is None:
        return 0.0
    now = time.monotonic()
    elapsed = (now - started_at) * len(busy_seconds)
    running = sum(now - since for since in running_since)
    return (sum(busy_seconds.values()) + running) / elapsed if elapsed > 0 else 0.0


def _death_reason(exitcode: int | None, step: int) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"worker killed by signal {name} at step {step}"
    return f"worker exited with code {exitcode} at step {step}"


@dataclass
class _Slot:
    device: str | None
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    job: TrialJob | None = None
    job_started: float = 0.0
    step: int = 0  # last progress of the running job
    pid: int | None = None  # the worker's pid, as it said when it started the job


class SlotPool:
    def __init__(self, devices: list[str | None]):
        if not devices:
            raise ValueError("a slot pool needs at least one slot")
        self.devices = list(devices)
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self.busy_seconds: dict[int, float] = {i: 0.0 for i in range(len(devices))}
        self.started_at: float | None = None
        # Slots share the host's cores; without a cap each worker's torch would use all of them.
        self._threads = max(1, _cpu_count() // len(devices))

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._slots = [self._spawn(i) for i in range(len(self.devices))]
        self.started_at = time.monotonic()

    def _spawn(self, index: int) -> _Slot:
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(index, self.devices[index], child_conn, self._threads, os.getpid()),
            name=f"sweep-worker-{index}",
            daemon=True,  # never outlive the controller
        )
        process.start()
        child_conn.close()  # only the child holds its end, so the parent sees EOF when it dies
        return _Slot(self.devices[index], process, parent_conn)

    def shutdown(self, timeout: float = 10.0) -> None:
        for slot in self._slots:
            try:
                slot.conn.send(None)
            except OSError:
                pass  # already dead
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(2.0)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
        self._slots = []

    # ---------------------------------------------------------------- jobs
    def idle_slots(self) -> list[int]:
        return [i for i, slot in enumerate(self._slots) if slot.job is None]

    def pids(self) -> list[int | None]:
        """The current worker process of each slot (a replaced worker has a new pid)."""
        return [slot.process.pid for slot in self._slots]

    def submit(self, slot: int, job: TrialJob) -> None:
        target = self._slots[slot]
        if target.job is not None:
            raise ValueError(f"slot {slot} is running trial {target.job.trial_number}")
        target.job, target.job_started, target.step, target.pid = job, time.monotonic(), 0, None
        try:
            target.conn.send(job)
        except OSError:
            pass  # the worker just died; the next poll fails this trial and replaces it

    def poll(self, timeout: float) -> list[tuple[int, str, object]]:
        """Events since the last poll, waiting up to ``timeout`` seconds for the first."""
        handles = [s.conn for s in self._slots] + [s.process.sentinel for s in self._slots]
        ready = set(wait(handles, timeout))
        events: list[tuple[int, str, object]] = []
        for index, slot in enumerate(self._slots):
            if slot.conn in ready:
                events += self._drain(index)
            if not slot.process.is_alive():
                events += self._replace(index)
        return events

    def utilization(self) -> float:
        return slot_utilization(self.busy_seconds, [s.job_started for s in self._slots if s.job is not None], self.started_at)

    # ------------------------------------------------------------ internals
    def _drain(self, index: int) -> list[tuple[int, str, object]]:
        slot, events = self._slots[index], []
        while True:
            try:
                if not slot.conn.poll():
                    break
                message = slot.conn.recv()
            except (EOFError, OSError):
                break  # the worker is gone; poll() replaces it
            kind = message[0]
            if kind == "started":
                slot.pid = message[2]
            elif kind == "progress":  # ("progress", trial, step, total, steps/s)
                slot.step = message[2]
                events.append((index, "progress", tuple(message[1:])))
            elif kind == "done":
                events.append((index, "done", self._finish(index, message[1])))
        return events

    def _finish(self, index: int, outcome: TrialOutcome) -> TrialOutcome:
        slot = self._slots[index]
        self.busy_seconds[index] += time.monotonic() - slot.job_started
        slot.job = None
        return outcome

    def _replace(self, index: int) -> list[tuple[int, str, object]]:
        slot = self._slots[index]
        slot.process.join()
        events = self._drain(index)  # what it sent before dying still counts (a finished trial stays finished)
        exitcode = slot.process.exitcode
        if slot.job is not None:
            reason = _death_reason(exitcode, slot.step)
            log.warning("slot %d: trial %d failed: %s; starting a new worker", index, slot.job.trial_number, reason)
            outcome = TrialOutcome(
                trial_number=slot.job.trial_number,
                state="FAIL",
                values=None,
                reason=reason,
                seconds=time.monotonic() - slot.job_started,
                rss_mb=0.0,
                step=slot.step,
            )
            events.append((index, "done", self._finish(index, outcome)))
        else:
            log.warning("slot %d: idle worker exited (%s); starting a new one", index, exitcode)
        slot.conn.close()
        self._slots[index] = self._spawn(index)
        return events


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
