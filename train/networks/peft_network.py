"""Families built from peft tuner layers (LoRA, LoHa, LoKr): inject, name, save, load, strength, max-norm.

peft builds and runs the layers; a family says which peft config to inject, how a
layer's tensors are spelled in the file A1111 and ComfyUI read, and which tensors
max-norm scales. Everything else (targets, kohya names, file checks) lives here once.
"""

from __future__ import annotations

import contextlib
import os
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, NoReturn

import torch
from torch import nn

from train.errors import ConfigError, UserError
from train.lora_format import build_metadata, read_lora, save_lora
from train.networks.base import WEIGHTS_KEY, MaxNormStats, Network, NetworkTargets, forked_seed, freeze
from train.networks.kohya_defaults import KohyaDifference, peft_differences
from train.networks.names import UNET_PREFIX, canonical_module_name, named_layers

if TYPE_CHECKING:  # peft loads with the adapters, not with a network's config check
    from peft import PeftConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

ADAPTER = "default"

# LoCon, as kohya's lora.py: inside ResnetBlock2D / Downsample2D / Upsample2D every
# Linear and 1x1 conv gets dim/alpha, every 3x3 conv gets conv_dim/conv_alpha.
LOCON_LINEAR_TARGETS = ["time_emb_proj", "conv_shortcut"]
LOCON_CONV_PATTERNS = [r"resnets\.\d+\.conv[12]", r"(down|up)samplers\.\d+\.conv"]
LOCON_CONV_TARGETS = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]


def tuner_layers(model: nn.Module | None) -> dict[str, BaseTunerLayer]:
    """peft module name -> tuner layer, for every layer holding our adapter."""
    if model is None:
        return {}
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and ADAPTER in getattr(module, "scaling", {})
    }


def adapter_parameters(layer: BaseTunerLayer) -> list[nn.Parameter]:
    """The layer's own parameters (not the frozen base layer's)."""
    return [p for name, p in layer.named_parameters() if not name.startswith("base_layer.")]


@contextlib.contextmanager
def peft_strength(layers: list[BaseTunerLayer], multiplier: float | None) -> Iterator[None]:
    """Run peft layers at ``multiplier`` x their scale, or off (None); restore after, grads included."""
    scales = [layer.scaling[ADAPTER] for layer in layers]
    disabled = [layer.disable_adapters for layer in layers]
    # peft's enable_adapters() also flips requires_grad on the adapter weights; keep the trainer's flags.
    params = [p for layer in layers for p in adapter_parameters(layer)]
    grads = [p.requires_grad for p in params]
    try:
        for layer, scale in zip(layers, scales, strict=True):
            layer.enable_adapters(multiplier is not None)
            if multiplier is not None:
                layer.scaling[ADAPTER] = scale * multiplier
        yield
    finally:
        for layer, scale, was_disabled in zip(layers, scales, disabled, strict=True):
            layer.scaling[ADAPTER] = scale
            layer.enable_adapters(not was_disabled)
        for param, grad in zip(params, grads, strict=True):
            param.requires_grad_(grad)


def fail(path: str | os.PathLike, problem: str, key: str = WEIGHTS_KEY) -> NoReturn:
    raise ConfigError(f"{key}: {path}: {problem}")


def _examples(names: list[str]) -> str:
    return f"{len(names)} (e.g. {', '.join(sorted(names)[:3])})"


class PeftNetwork(Network):
    """A network of peft tuner layers on the U-Net (attention, plus conv with conv_dim) and text encoders."""

    # kohya's ss_network_module, and for LyCORIS files the algo in ss_network_args.
    network_module = "lycoris.kohya"
    algo: str | None = None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.layers: dict[str, BaseTunerLayer] = {}  # kohya module name -> layer

    # ----------------------------------------------------------- per family
    @abstractmethod
    def peft_config(self, targets: list[str], rank_pattern: dict, alpha_pattern: dict) -> PeftConfig:
        """The peft config to inject, with dim/alpha from the network config."""

    @abstractmethod
    def layer_tensors(self, layer: BaseTunerLayer) -> dict[str, torch.Tensor]:
        """The layer as the file spells it: suffix (``lora_down.weight``, ``hada_w1_a``, ...) -> tensor."""

    @abstractmethod
    def load_layer(self, name: str, layer: BaseTunerLayer, tensors: dict[str, torch.Tensor], path, key) -> None:
        """Copy one module's file tensors into its layer; ``fail`` with the reason if they do not fit."""

    @abstractmethod
    def norm_factors(self, layer: BaseTunerLayer) -> list[tuple[torch.Tensor, float]]:
        """(tensor, power): max-norm multiplies each by ratio**power, so the update scales by ratio."""

    def file_suffixes(self) -> tuple[str, ...]:
        """Every tensor suffix a file of this family may hold (``alpha`` included)."""
        return ("alpha",)

    def trainable_parameters(self, layer: BaseTunerLayer) -> list[nn.Parameter]:
        return adapter_parameters(layer)

    def after_apply(self, layers: dict[str, BaseTunerLayer]) -> None:
        """Hook for families that add behaviour around peft's layers (dropouts, DoRA)."""

    def kohya_differences(self) -> list[KohyaDifference]:
        return peft_differences(self.cfg, self.network_module)

    def network_args(self) -> dict[str, str]:
        args: dict[str, str] = {"algo": self.algo} if self.algo else {}
        if self.cfg.conv_dim is not None:
            # kohya parses --network_args "conv_dim=4" into strings, and tools read them back so.
            args |= {"conv_dim": str(self.cfg.conv_dim), "conv_alpha": str(self.cfg.effective_conv_alpha)}
        for key in ("rank_dropout", "module_dropout"):
            if getattr(self.cfg, key) is not None:
                args[key] = str(getattr(self.cfg, key))
        return args

    # ------------------------------------------------------------- building
    def _unet_config(self) -> PeftConfig:
        cfg = self.cfg
        targets = list(cfg.unet_target_modules)
        rank_pattern: dict[str, int] = {}
        alpha_pattern: dict[str, float] = {}
        if cfg.conv_dim is not None:
            targets += LOCON_LINEAR_TARGETS + LOCON_CONV_TARGETS
            for pattern in LOCON_CONV_PATTERNS:
                rank_pattern[pattern] = cfg.conv_dim
                alpha_pattern[pattern] = cfg.effective_conv_alpha
        return self.peft_config(targets, rank_pattern, alpha_pattern)

    def _inject(self, model: nn.Module, config: PeftConfig, key: str) -> None:
        if tuner_layers(model):
            raise RuntimeError(f"{type(self).__name__}.apply: the model already has adapter layers ({key})")
        try:
            # peft itself, not the model's add_adapter: transformers' wrapper demands peft
            # releases newer than some installs have, and adds nothing we use.
            from peft import inject_adapter_in_model

            inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        except ValueError as error:  # peft: no module matches the target names
            raise ConfigError(f"{key}: {error}") from error

    def apply(self, targets: NetworkTargets, seed: int) -> dict[str, list[nn.Parameter]]:
        cfg = self.cfg
        freeze(targets)
        self.targets = targets
        # peft draws the init from the global RNG (on CPU, before moving to the model's
        # device); fork it so the init depends on `seed` only and the caller's RNG is untouched.
        with forked_seed(seed):
            if cfg.train_unet:
                self._inject(targets.unet, self._unet_config(), "network.unet_target_modules")
            if cfg.train_text_encoder:
                if not targets.text_encoders:
                    raise ConfigError("network.train_text_encoder: set, but the model has no text encoder")
                te_config = self.peft_config(list(cfg.text_encoder_target_modules), {}, {})
                for encoder in targets.text_encoders.values():
                    self._inject(encoder, te_config, "network.text_encoder_target_modules")
        self.layers = named_layers(targets, tuner_layers)
        self.after_apply(self.layers)
        params: dict[str, list[nn.Parameter]] = {"unet": [], "text_encoder": []}
        for name, layer in self.layers.items():
            adapter = adapter_parameters(layer)
            for param in adapter:
                param.data = param.data.to(torch.float32)  # train in fp32 even over a bf16/fp16 base, as kohya does
                param.requires_grad_(False)
            trainable = self.trainable_parameters(layer)
            for param in trainable:
                param.requires_grad_(True)
            params["unet" if name.startswith(UNET_PREFIX) else "text_encoder"].extend(trainable)
        return params

    # ------------------------------------------------------------ file I/O
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained network as the file's tensors (fp32, on the CPU), keys sorted."""
        tensors = {}
        for name, layer in self.layers.items():
            for suffix, tensor in self.layer_tensors(layer).items():
                tensors[f"{name}.{suffix}"] = tensor.detach().to("cpu").contiguous().clone()
        return dict(sorted(tensors.items()))

    def metadata(self) -> dict[str, object]:
        return {
            "ss_network_module": self.network_module,
            "ss_network_dim": self.cfg.dim,
            "ss_network_alpha": self.cfg.effective_alpha,
            "ss_network_args": self.network_args(),
            "ss_network_dropout": self.cfg.network_dropout,
            "ss_scale_weight_norms": self.cfg.scale_weight_norms,
        }

    def save(self, path: str | os.PathLike, metadata: Mapping[str, object]) -> None:
        save_lora(path, self.state_dict(), build_metadata(self.metadata(), metadata))

    def load(self, path: str | os.PathLike, key: str = WEIGHTS_KEY) -> None:
        try:
            tensors, _ = read_lora(path)
        except UserError as error:
            raise ConfigError(f"{key}: {error}") from error
        modules: dict[str, dict[str, torch.Tensor]] = {}
        unknown = []
        suffixes = self.file_suffixes()
        for file_key, tensor in tensors.items():
            module_name, _, suffix = file_key.partition(".")
            if suffix not in suffixes:
                unknown.append(file_key)
                continue
            modules.setdefault(canonical_module_name(module_name, self.targets), {})[suffix] = tensor
        if unknown:
            fail(path, f"not a {self.family} file; unexpected keys {_examples(unknown)}", key)
        extra = [name for name in modules if name not in self.layers]
        missing = [name for name in self.layers if name not in modules]
        if extra:
            fail(
                path,
                f"modules the configured network does not have: {_examples(extra)}; check network.conv_dim, "
                "network.train_text_encoder and the target modules",
                key,
            )
        if missing:
            fail(path, f"lacks modules the configured network trains: {_examples(missing)}", key)
        with torch.no_grad():
            for name, layer in self.layers.items():
                self.load_layer(name, layer, modules[name], path, key)

    # ----------------------------------------------------- strength, norms
    def strength(self, multiplier: float | None) -> contextlib.AbstractContextManager[None]:
        return peft_strength(list(self.layers.values()), multiplier)

    def apply_max_norm(self, max_norm: float) -> MaxNormStats:
        """kohya's apply_max_norm_regularization on each module's update (scale included)."""
        scaled, norms = 0, []
        with torch.no_grad():
            for layer in self.layers.values():
                update = self.delta_weight(layer).float()
                norm = update.norm().clamp(min=max_norm / 2)
                ratio = float(norm.clamp(max=max_norm) / norm)
                # A module left exactly at the bound last step must not count (or shrink) again.
                if ratio < 1.0 - 1e-6:
                    scaled += 1
                    for tensor, power in self.norm_factors(layer):
                        tensor.mul_(ratio**power)
                else:
                    ratio = 1.0
                norms.append(float(update.norm()) * ratio)
        if not norms:
            return MaxNormStats(0, 0.0, 0.0)
        return MaxNormStats(scaled, sum(norms) / len(norms), max(norms))

    def delta_weight(self, layer: BaseTunerLayer) -> torch.Tensor:
        """The layer's weight update at its trained scale (what max-norm bounds)."""
        return layer.get_delta_weight(ADAPTER)


def layer_alpha(layer: BaseTunerLayer) -> float:
    """kohya's alpha for a peft layer: peft scales by alpha / r, kohya by alpha / dim."""
    return float(layer.scaling[ADAPTER] * layer.r[ADAPTER])


def file_alpha(tensors: dict[str, torch.Tensor], rank: int, name: str, path, key) -> float:
    """A module's alpha from its file tensors; kohya: no alpha means alpha = rank."""
    alpha = tensors.get("alpha", torch.tensor(float(rank)))
    if alpha.numel() != 1:
        fail(path, f"{name}.alpha must be a single number, has shape {tuple(alpha.shape)}", key)
    return float(alpha)


def check_shape(param: torch.Tensor, tensor: torch.Tensor, what: str, path, key, hint: str) -> None:
    if tuple(param.shape) != tuple(tensor.shape):
        fail(
            path,
            f"{what} has shape {tuple(tensor.shape)} but the configured network has {tuple(param.shape)} ({hint})",
            key,
        )
