"""kohya's sample-sampler names mapped to diffusers schedulers.

The same names kohya's ``--sample_sampler`` and ``--ss`` accept (with the
``k_`` aliases), built from the base model's own scheduler config so the noise
schedule and prediction type are the model's.
"""

from __future__ import annotations

import importlib.util

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from train.errors import ConfigError

# name -> (scheduler class, extra from_config kwargs); kohya's train_util.get_my_scheduler.
SAMPLERS: dict[str, tuple[type, dict]] = {
    "ddim": (DDIMScheduler, {}),
    # PLMS, as SD's own scheduler_config.json sets it; the PRK warm-up breaks below ~8 steps.
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lms": (LMSDiscreteScheduler, {}),
    "k_lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "k_euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "k_euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm_2": (KDPM2DiscreteScheduler, {}),
    "k_dpm_2": (KDPM2DiscreteScheduler, {}),
    "dpm_2_a": (KDPM2AncestralDiscreteScheduler, {}),
    "k_dpm_2_a": (KDPM2AncestralDiscreteScheduler, {}),
    # first-order DPM-Solver cannot step to sigma 0; diffusers requires ending at sigma_min.
    "dpmsolver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": (DPMSolverSinglestepScheduler, {}),
}


def check_sampler(name: str, key: str = "evaluate.sampler") -> str:
    """``name`` if it is a usable sampler; otherwise a ConfigError under ``key``."""
    if name not in SAMPLERS:
        raise ConfigError(f"{key}: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    scheduler_class = SAMPLERS[name][0]
    # diffusers swaps in a placeholder class when an optional backend (scipy for LMS) is missing.
    if scheduler_class.__module__.startswith("diffusers.utils.dummy_"):
        missing = [b for b in getattr(scheduler_class, "_backends", []) if importlib.util.find_spec(b) is None]
        needs = " ".join(missing) or "an optional package"
        raise ConfigError(f"{key}: sampler {name!r} needs {needs} (pip install {needs}); or pick another sampler")
    return name


def make_scheduler(name: str, base_config) -> SchedulerMixin:
    """A fresh scheduler of sampler ``name`` on the model's schedule (``base_config``: its scheduler config)."""
    scheduler_class, kwargs = SAMPLERS[check_sampler(name)]
    return scheduler_class.from_config(base_config, **kwargs)
