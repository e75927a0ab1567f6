"""kohya's sample-sampler names mapped to diffusers schedulers.

The same names kohya's ``--sample_sampler`` and ``--ss`` accept (with the
``k_`` aliases), built from the base model's own scheduler config so the noise
schedule and prediction type are the model's.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from train.errors import ConfigError

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (diffusers scheduler class, extra from_config kwargs); kohya's train_util.get_my_scheduler.
# Class names, not classes: checking a prompt's sampler must not import diffusers (seconds on 2 cores).
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    # PLMS, as SD's own scheduler_config.json sets it; the PRK warm-up breaks below ~8 steps.
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "k_euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # first-order DPM-Solver cannot step to sigma 0; diffusers requires ending at sigma_min.
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
# The optional packages a diffusers scheduler needs (diffusers swaps in a placeholder without them).
NEEDS = {"LMSDiscreteScheduler": ("scipy",)}


def check_sampler(name: str, key: str = "evaluate.sampler") -> str:
    """``name`` if it is a usable sampler; otherwise a ConfigError under ``key``."""
    if name not in SAMPLERS:
        raise ConfigError(f"{key}: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    missing = [p for p in NEEDS.get(SAMPLERS[name][0], ()) if importlib.util.find_spec(p) is None]
    if missing:
        needs = " ".join(missing)
        raise ConfigError(f"{key}: sampler {name!r} needs {needs} (pip install {needs}); or pick another sampler")
    return name


def make_scheduler(name: str, base_config) -> SchedulerMixin:
    """A fresh scheduler of sampler ``name`` on the model's schedule (``base_config``: its scheduler config)."""
    class_name, kwargs = SAMPLERS[check_sampler(name)]
    scheduler_class = getattr(importlib.import_module("diffusers"), class_name)
    return scheduler_class.from_config(base_config, **kwargs)
