"""kohya's module names: how A1111, ComfyUI and kohya's scripts name an adapted module in a file.

``lora_unet_<module path>`` and ``lora_te_<module path>`` with the path's dots as
underscores. SD 1.x/2.x U-Nets keep diffusers' paths (kohya trains SD 1.x on the
diffusers U-Net); SDXL files use the original SGM layout (``input_blocks_4_1_...``)
and name the two text encoders ``lora_te1_`` and ``lora_te2_``. diffusers' loader
reads all of these back (tests check every name round-trips through it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from train.networks.base import NetworkTargets

UNET_PREFIX = "lora_unet"


def text_encoder_path(module_name: str) -> str:
    """transformers 5 dropped CLIPTextModel's ``text_model`` wrapper; kohya names keep it."""
    return module_name if module_name.startswith("text_model.") else f"text_model.{module_name}"


def kohya_name(prefix: str, dotted_path: str) -> str:
    return f"{prefix}_{dotted_path.replace('.', '_')}"


def unet_kohya_name(module_name: str, unet: nn.Module, sgm: bool) -> str:
    if sgm:
        from train.networks.sgm_names import sgm_module_name

        module_name = sgm_module_name(module_name, unet.config)
    return kohya_name(UNET_PREFIX, module_name)


def named_layers(
    targets: NetworkTargets, layers_of: Callable[[nn.Module], dict[str, nn.Module]]
) -> dict[str, nn.Module]:
    """kohya module name -> layer, for every layer ``layers_of`` finds in the U-Net and text encoders."""
    named = {}
    for name, layer in layers_of(targets.unet).items():
        named[unet_kohya_name(name, targets.unet, targets.sgm_names)] = layer
    for prefix, encoder in targets.text_encoders.items():
        for name, layer in layers_of(encoder).items():
            named[kohya_name(prefix, text_encoder_path(name))] = layer
    return dict(sorted(named.items()))


def canonical_module_name(name: str, targets: NetworkTargets) -> str:
    """A file's module name as we name it: SD 1.x files written by diffusers' converter say lora_te1_."""
    if "lora_te" in targets.text_encoders and name.startswith("lora_te1_"):
        return f"lora_te_{name[len('lora_te1_') :]}"
    return name


def adaptable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Every layer a kohya LoRA/LoCon file can name: linear and conv layers."""
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, nn.Linear | nn.Conv2d)}


def modules_missing_from(file_modules: Iterable[str], targets: NetworkTargets) -> list[str]:
    """The kohya module names of a file that name no layer of these models (a file made for another base)."""
    have = set(named_layers(targets, adaptable_layers))
    kohya = (name for name in file_modules if name.startswith(("lora_unet_", "lora_te")))
    return sorted(name for name in kohya if canonical_module_name(name, targets) not in have)
