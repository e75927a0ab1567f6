"""LoHa (Hadamard product) and LoKr (Kronecker product) on peft's LyCORIS-derived layers.

Files use LyCORIS's key suffixes (``hada_w1_a`` ..., ``lokr_w1`` ...) plus ``alpha``,
the format A1111 and ComfyUI read: they scale a module by alpha / rank, where the
rank is the inner dim of the decomposed factors, and by 1 when no factor is
decomposed. rank_dropout and module_dropout are peft's (LyCORIS semantics).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from train.errors import ConfigError
from train.networks.peft_network import ADAPTER, PeftNetwork, check_shape, fail, file_alpha, layer_alpha

if TYPE_CHECKING:  # peft loads with the adapters, not with a network's config check
    from peft import LoHaConfig, LoKrConfig
    from peft.tuners.lycoris_utils import LycorisLayer

log = logging.getLogger(__name__)


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"network.module.{key}: must be true or false, got {value!r}")
    return value


class LycorisNetwork(PeftNetwork):
    """What LoHa and LoKr share: LyCORIS metadata, the dropouts peft implements, file keys."""

    network_module = "lycoris.kohya"
    suffixes: tuple[str, ...] = ()

    def __init__(self, cfg, use_tucker: bool = False):
        super().__init__(cfg)
        if cfg.network_dropout:
            # LyCORIS has no neuron dropout for LoHa/LoKr either.
            raise ConfigError(
                f"network.network_dropout: {self.family} has no neuron dropout; "
                "use network.rank_dropout or network.module_dropout"
            )
        self.use_tucker = _flag("use_tucker", use_tucker)

    def common_options(self) -> dict:
        return {
            "r": self.cfg.dim,
            "alpha": self.cfg.effective_alpha,
            "rank_dropout": self.cfg.rank_dropout or 0.0,
            "module_dropout": self.cfg.module_dropout or 0.0,
            # Tucker (CP) decomposition of 3x3 convs, LyCORIS's use_tucker.
            "use_effective_conv2d": self.use_tucker,
            "init_weights": True,  # one factor starts at zero: a fresh network changes nothing
        }

    def network_args(self) -> dict[str, str]:
        return super().network_args() | {"use_tucker": str(self.use_tucker)}

    def file_suffixes(self) -> tuple[str, ...]:
        return (*self.suffixes, "alpha")

    def present(self, layer: LycorisLayer) -> dict[str, torch.nn.Parameter]:
        """The factor parameters this layer has (which ones depends on shapes and options)."""
        return {s: getattr(layer, s)[ADAPTER] for s in self.suffixes if ADAPTER in getattr(layer, s)}

    def copy_factors(self, name, layer, tensors, path, key) -> None:
        params = self.present(layer)
        missing = sorted(set(params) - set(tensors))
        if missing:
            fail(path, f"{name} lacks {', '.join(missing)}: saved with other network.dim/conv_dim or options", key)
        for suffix, param in params.items():
            check_shape(param, tensors[suffix], f"{name}.{suffix}", path, key, "network.dim / network.conv_dim")
            param.copy_(tensors[suffix].to(param.dtype))


class LoHa(LycorisNetwork):
    """LoHa: ΔW = s · (w1_a w1_b) ⊙ (w2_a w2_b), rank dim² in dim·(in+out)·2 parameters."""

    algo = "loha"
    suffixes = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    def peft_config(self, targets, rank_pattern, alpha_pattern) -> LoHaConfig:
        from peft import LoHaConfig

        return LoHaConfig(
            target_modules=targets, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, **self.common_options()
        )

    def layer_tensors(self, layer: LycorisLayer):
        return self.present(layer) | {"alpha": torch.tensor(layer_alpha(layer), dtype=torch.float32)}

    def load_layer(self, name, layer, tensors, path, key) -> None:
        self.copy_factors(name, layer, tensors, path, key)
        alpha = file_alpha(tensors, layer.r[ADAPTER], name, path, key)
        layer.hada_w1_a[ADAPTER].mul_(alpha / layer_alpha(layer))  # another config alpha: same update

    def norm_factors(self, layer: LycorisLayer):
        return [(layer.hada_w1_a[ADAPTER], 0.5), (layer.hada_w2_a[ADAPTER], 0.5)]


class LoKr(LycorisNetwork):
    """LoKr: ΔW = s · w1 ⊗ w2 with the dims split by ``factor`` (-1: as square as possible)."""

    algo = "lokr"
    suffixes = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    def __init__(self, cfg, factor: int = -1, decompose_both: bool = False, use_tucker: bool = False):
        super().__init__(cfg, use_tucker=use_tucker)
        if isinstance(factor, bool) or not isinstance(factor, int) or not (factor == -1 or factor >= 1):
            raise ConfigError(f"network.module.factor: must be -1 (automatic) or an integer >= 1, got {factor!r}")
        self.factor = factor
        self.decompose_both = _flag("decompose_both", decompose_both)
        if self.use_tucker and cfg.conv_dim is not None:  # Tucker cores only on 3x3 convs
            log.warning(
                "network.module.use_tucker=true: ComfyUI's LoKr loader fails on some Tucker-decomposed 3x3 convs "
                "and skips them, logging an ERROR (A1111 applies them; Comfy-Org/ComfyUI#11245); "
                "set network.module.use_tucker=false for files ComfyUI applies whole"
            )

    def peft_config(self, targets, rank_pattern, alpha_pattern) -> LoKrConfig:
        from peft import LoKrConfig

        return LoKrConfig(
            target_modules=targets,
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            decompose_both=self.decompose_both,
            decompose_factor=self.factor,
            **self.common_options(),
        )

    def network_args(self) -> dict[str, str]:
        return super().network_args() | {"factor": str(self.factor), "decompose_both": str(self.decompose_both)}

    @staticmethod
    def _undecomposed(layer: LycorisLayer) -> bool:
        return ADAPTER in layer.lokr_w1 and ADAPTER in layer.lokr_w2

    def layer_tensors(self, layer: LycorisLayer):
        tensors = dict(self.present(layer))
        if self._undecomposed(layer):
            # Readers scale a module without decomposed factors by 1 (LyCORIS sets alpha = dim
            # then), so the scale goes into w2; peft scales by alpha / r either way.
            tensors["lokr_w2"] = tensors["lokr_w2"] * layer.scaling[ADAPTER]
        return tensors | {"alpha": torch.tensor(layer_alpha(layer), dtype=torch.float32)}

    def load_layer(self, name, layer, tensors, path, key) -> None:
        self.copy_factors(name, layer, tensors, path, key)
        if self._undecomposed(layer):
            layer.lokr_w2[ADAPTER].div_(layer.scaling[ADAPTER])
            return
        alpha = file_alpha(tensors, layer.r[ADAPTER], name, path, key)
        self._first_factor(layer).mul_(alpha / layer_alpha(layer))

    @staticmethod
    def _first_factor(layer: LycorisLayer) -> torch.nn.Parameter:
        return layer.lokr_w1[ADAPTER] if ADAPTER in layer.lokr_w1 else layer.lokr_w1_a[ADAPTER]

    def norm_factors(self, layer: LycorisLayer):
        second = layer.lokr_w2[ADAPTER] if ADAPTER in layer.lokr_w2 else layer.lokr_w2_a[ADAPTER]
        return [(self._first_factor(layer), 0.5), (second, 0.5)]
