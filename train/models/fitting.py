"""The optimiser step every build loop of the world ends with, and its progress report.

The world's parts (VAE, base model, CLIP, aesthetic head, judge) each train in a
plain loop of their own; what differs is how a batch becomes a loss. What they
share is here: backward, optional gradient clipping, the optimiser and
schedule steps, and a report the builder logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

# (part, step, total, {"loss": ..., "s": seconds so far})
Progress = Callable[[str, int, int, dict], None]


class Fitting:
    """One optimisation step at a time for the part ``name``, reported through ``progress``."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, schedule, total: int, *,
                 clip_params: Iterable[Tensor] | None = None, progress: Progress | None = None) -> None:
        self.name, self.optimizer, self.schedule, self.total = name, optimizer, schedule, total
        self.clip_params = list(clip_params) if clip_params is not None else None
        self.progress = progress
        self.started = time.time()

    def step(self, step: int, loss: Tensor, shown: Tensor | None = None) -> None:
        """Backward ``loss`` and step; the report shows ``shown`` (the loss itself by default)."""
        loss.backward()
        if self.clip_params is not None:
            torch.nn.utils.clip_grad_norm_(self.clip_params, 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.progress:
            value = (loss if shown is None else shown).item()
            self.progress(self.name, step + 1, self.total, {"loss": value, "s": time.time() - self.started})
