"""What every network family does: add itself to the models, save, load back, set its strength.

A family (LoRA, LoHa, LoKr, hypernetwork, ...) is a ``Network`` subclass named by
``network.module._target_``; its own options are the other keys of ``network.module``.
The recipe only talks to this interface, so adding a family touches no trainer code.
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from train.config import NetworkConfig
from train.errors import ConfigError
from train.networks.kohya_defaults import KohyaDifference, describe

log = logging.getLogger(__name__)
WEIGHTS_KEY = "train.network_weights"


@dataclass
class NetworkTargets:
    """The modules a network adapts, and how kohya names them in files."""

    unet: nn.Module
    # kohya prefix -> text encoder: {"lora_te": te} for SD 1.x/2.x, {"lora_te1": te1, "lora_te2": te2} for SDXL.
    text_encoders: dict[str, nn.Module] = field(default_factory=dict)
    # SDXL: kohya names U-Net modules by the original (SGM) layout, lora_unet_input_blocks_4_1_...
    sgm_names: bool = False

    @classmethod
    def of(cls, model) -> NetworkTargets:
        """From a BaseModel or a diffusers pipeline; SDXL when it has a second text encoder."""
        second = getattr(model, "text_encoder_2", None)
        if second is None:
            return cls(model.unet, {"lora_te": model.text_encoder})
        return cls(model.unet, {"lora_te1": model.text_encoder, "lora_te2": second}, sgm_names=True)


@dataclass(frozen=True)
class MaxNormStats:
    """kohya's max-norm log: modules scaled this step, mean and max update norm after scaling."""

    keys_scaled: int
    average_key_norm: float
    max_key_norm: float

    def scalars(self) -> dict[str, float]:
        return {
            "max_norm/keys_scaled": float(self.keys_scaled),
            "max_norm/average_key_norm": self.average_key_norm,
            "max_norm/max_key_norm": self.max_key_norm,
        }


class Network(ABC):
    """One adapter family over a model's U-Net and text encoders."""

    # The file A1111 and ComfyUI read for this family.
    file_suffix = ".safetensors"

    def __init__(self, cfg: NetworkConfig):
        self.cfg = cfg
        self.targets: NetworkTargets | None = None

    @property
    def family(self) -> str:
        return type(self).__name__

    @abstractmethod
    def apply(self, targets: NetworkTargets, seed: int) -> dict[str, list[nn.Parameter]]:
        """Freeze the models, add this network, return its trainable parameters.

        LoRA-like families start as a no-op (one factor zero); a hypernetwork starts
        from A1111's small random init.

        Keys: "unet" and "text_encoder" (all text encoders together: one learning rate).
        Everything random in the init comes from ``seed``; the caller's RNG is untouched.
        """

    @abstractmethod
    def save(self, path: str | os.PathLike, metadata: Mapping[str, object]) -> None:
        """Write the trained network atomically, in the format A1111 and ComfyUI read.

        ``metadata`` holds the training facts (kohya's ss_* keys) to store beside it.
        """

    @abstractmethod
    def load(self, path: str | os.PathLike, key: str = WEIGHTS_KEY) -> None:
        """Load a file of this family into the applied modules; a ConfigError naming ``key`` if it does not fit."""

    @abstractmethod
    def strength(self, multiplier: float | None) -> contextlib.AbstractContextManager[None]:
        """Inside the block the network runs at ``multiplier`` x its trained strength, or is off (None)."""

    def kohya_differences(self) -> list[KohyaDifference]:
        """Where this config trains otherwise than kohya/LyCORIS would with the same flags (none by default)."""
        return []

    def log_kohya_differences(self) -> None:
        """One log line at run start, if any; a warning when one of them changes the update's scale."""
        found = self.kohya_differences()
        if found:
            level = logging.WARNING if any(d.changes_scale for d in found) else logging.INFO
            log.log(level, describe(self.family, found))

    def apply_max_norm(self, max_norm: float) -> MaxNormStats:
        """kohya's scale_weight_norms: scale every module whose update norm exceeds ``max_norm``."""
        raise ConfigError(f"network.scale_weight_norms: the {self.family} network has no max-norm")


def freeze(targets: NetworkTargets) -> None:
    targets.unet.requires_grad_(False)
    for encoder in targets.text_encoders.values():
        encoder.requires_grad_(False)


@contextlib.contextmanager
def forked_seed(seed: int) -> Iterator[None]:
    """Seed the global CPU RNG inside the block and restore it after: inits depend on ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
