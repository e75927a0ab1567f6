"""The network config a saved file was trained with, read back from the file alone.

Scoring a folder of files (``python -m evaluate``) must rebuild each file's network
without the run's config: the family from the tensor keys, ranks and alphas from the
tensors (kohya's ss_* metadata where the tensors cannot tell), the family options
from ``ss_network_args`` or, for an A1111 hypernetwork ``.pt``, from its header.
``build_network(cfg).apply(...)`` then ``.load(path)`` reproduces the saved network.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from train.config import NetworkConfig
from train.errors import ConfigError, UserError
from train.lora_format import read_lora
from train.networks import build_network
from train.networks.hypernetwork import WEIGHT_INITS, read_hypernetwork_file

HYPERNETWORK_SUFFIXES = (".pt", ".pth")
TARGETS = {
    "lora": "train.networks.lora.LoRA",
    "locon": "train.networks.lora.LoRA",
    "lora_fa": "train.networks.lora.LoRAFA",
    "dora": "train.networks.lora.DoRA",
    "loha": "train.networks.lycoris.LoHa",
    "lokr": "train.networks.lycoris.LoKr",
    "hypernetwork": "train.networks.hypernetwork.Hypernetwork",
}
# kohya's and diffusers' spellings of a LoRA module's down projection (its rank is dim 0).
LORA_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight")
LORA_KEYS = (*LORA_DOWN, "lora_up.weight", "lora_B.weight", "lora.up.weight", "alpha")
# The factors whose dim 0 is the module's rank, per family.
RANK_FACTORS = {"loha": ("hada_w1_b",), "lokr": ("lokr_w2_b", "lokr_w1_b")}
# 3x3 convs (LoCon's conv_dim modules) in kohya names: diffusers' layout (SD 1.x/2.x) and SGM's (SDXL).
CONV_NAME = re.compile(r"(resnets_\d+_conv[12]|samplers_\d+_conv|_in_layers_2|_out_layers_3|_\d+_0_op|_\d+_[12]_conv)$")
SGM_UNET = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
UNET_PREFIXES = ("lora_unet_", "unet.")
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder")
Fail = Callable[[str], NoReturn]


@dataclass(frozen=True)
class NetworkFile:
    """What a saved network file is: its family, the config that rebuilds it, its training facts."""

    path: Path
    family: str  # one of train.networks.SHIPPED_NETWORKS
    config: NetworkConfig
    metadata: dict[str, str] = field(default_factory=dict)  # kohya ss_* facts (a .pt: from its header)
    text_encoders: tuple[str, ...] = ()  # kohya prefixes found: ("lora_te",) or ("lora_te1", "lora_te2")
    sgm_names: bool = False  # U-Net modules in the SGM layout (SDXL files)


def network_config_for_file(path: str | Path, key: str = "files") -> NetworkConfig:
    """The NetworkConfig whose network loads ``path``; one ConfigError naming ``key`` and the path if unusable."""
    return inspect_network_file(path, key).config


def inspect_network_file(path: str | Path, key: str = "files") -> NetworkFile:
    """Read ``path`` (kohya/LyCORIS .safetensors or A1111 hypernetwork .pt) and rebuild its network config."""
    path = Path(path)

    def fail(problem: str) -> NoReturn:
        raise ConfigError(f"{key}: {path}: {problem}")

    if path.suffix.lower() in HYPERNETWORK_SUFFIXES:
        found = _hypernetwork_file(path, fail)
    else:
        found = _safetensors_file(path, fail)
    _check_builds(found.config, fail)
    return found


def _check_builds(cfg: NetworkConfig, fail: Fail) -> None:
    """Build the family without a model, so an option the file implies but we lack fails here, named."""
    try:
        build_network(cfg)
    except ConfigError as error:
        fail(f"its network cannot be rebuilt ({error})")


def _network_config(fail: Fail, **values: Any) -> NetworkConfig:
    try:
        return NetworkConfig(**values)
    except ConfigError as error:
        fail(f"its network settings are impossible ({error})")


# ---------------------------------------------------------------- safetensors files
def _safetensors_file(path: Path, fail: Fail) -> NetworkFile:
    try:
        tensors, metadata = read_lora(path)
    except UserError as error:
        fail(str(error).removeprefix(f"{path}: "))
    modules = _modules(tensors, fail)
    family = _family(modules, metadata)
    values = _shared_values(family, modules, metadata, fail)
    values["module"] = {"_target_": TARGETS[family], **_family_options(family, modules, _network_args(metadata))}
    if family == "lora" and values.get("conv_dim") is not None:
        family = "locon"
    return NetworkFile(
        path=path,
        family=family,
        config=_network_config(fail, name=family, **values),
        metadata=metadata,
        text_encoders=tuple(sorted({_te_prefix(name) for name in _te_names(modules)})),
        sgm_names=any(name.startswith(SGM_UNET) for name in modules),
    )


def _suffix_of(file_key: str) -> tuple[str, str] | None:
    """(module, suffix) of a tensor key of any family we read; None for keys of no known family."""
    for suffix in LORA_KEYS:
        if file_key.endswith("." + suffix):
            return file_key[: -len(suffix) - 1], suffix
    module, _, suffix = file_key.partition(".")
    if suffix.startswith(("hada_", "lokr_")) or suffix == "dora_scale":
        return module, suffix
    return None


def _modules(tensors: Mapping[str, torch.Tensor], fail: Fail) -> dict[str, dict[str, torch.Tensor]]:
    """Module name -> suffix -> tensor; fails naming the keys no family we know writes."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for file_key, tensor in tensors.items():
        split = _suffix_of(file_key)
        if split is None:
            unknown.append(file_key)
        else:
            modules.setdefault(split[0], {})[split[1]] = tensor
    if not tensors:
        fail("not a network file: it holds no tensors")
    if unknown:
        fail(
            "not a LoRA, LoCon, LoRA-FA, DoRA, LoHa or LoKr file: "
            f"{len(unknown)} keys no network family writes (e.g. {', '.join(sorted(unknown)[:3])})"
        )
    return modules


def _family(modules: Mapping[str, Mapping[str, torch.Tensor]], metadata: Mapping[str, str]) -> str:
    suffixes = {suffix for tensors in modules.values() for suffix in tensors}
    if any(s.startswith("hada_") for s in suffixes):
        return "loha"
    if any(s.startswith("lokr_") for s in suffixes):
        return "lokr"
    if "dora_scale" in suffixes:
        return "dora"
    return "lora_fa" if metadata.get("ss_network_module") == "networks.lora_fa" else "lora"


def _is_conv(name: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    """A 3x3 conv module (LoCon's conv_dim): by its kohya name, or a tensor with a spatial kernel."""
    return bool(CONV_NAME.search(name)) or any(t.dim() == 4 and t.shape[-1] > 1 for t in tensors.values())


def _rank(family: str, tensors: Mapping[str, torch.Tensor]) -> int | None:
    """The module's rank, or None where its tensors carry none (a LoKr module without decomposed factors)."""
    for name in RANK_FACTORS.get(family, LORA_DOWN):
        if name in tensors:
            return int(tensors[name].shape[0])
    return None


def _first(*values: Any) -> Any:
    """The first value that is not None: tensors first, then metadata, then a fallback."""
    return next((v for v in values if v is not None), None)


def _most_common(values: Iterable) -> Any:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _common_rank(family: str, modules: list[Mapping[str, torch.Tensor]]) -> int | None:
    return _most_common(r for tensors in modules if (r := _rank(family, tensors)) is not None)


def _alpha(modules: list[Mapping[str, torch.Tensor]]) -> float | None:
    return _most_common(round(float(t["alpha"]), 6) for t in modules if "alpha" in t and t["alpha"].numel() == 1)


def _number(text: object, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        return None


def _shared_values(family: str, modules: Mapping[str, Mapping[str, torch.Tensor]], metadata, fail: Fail) -> dict:
    """dim/alpha (linear modules), conv_dim/conv_alpha (3x3 convs), what is trained, the target modules."""
    convs = [t for name, t in modules.items() if _is_conv(name, t)]
    linears = [t for name, t in modules.items() if not _is_conv(name, t)]
    args = _network_args(metadata)
    dim = _first(
        _common_rank(family, linears), _number(metadata.get("ss_network_dim"), int), _unranked_dim(modules.values())
    )
    alpha = _first(_alpha(linears), _number(metadata.get("ss_network_alpha"), float), float(dim))
    values: dict[str, Any] = {"dim": dim, "alpha": alpha}
    if convs:
        conv_dim = _first(_common_rank(family, convs), _number(args.get("conv_dim"), int), _unranked_dim(convs))
        conv_alpha = _first(_alpha(convs), _number(args.get("conv_alpha"), float), float(conv_dim))
        values |= {"conv_dim": conv_dim, "conv_alpha": conv_alpha}
    unet = [name for name in modules if name.startswith(UNET_PREFIXES)]
    text = _te_names(modules)
    if not unet and not text:
        fail("its module names are neither U-Net (lora_unet_) nor text encoder (lora_te_) modules")
    values |= {"train_unet": bool(unet), "train_text_encoder": bool(text)}
    defaults = NetworkConfig()
    for option, names in (("unet_target_modules", unet), ("text_encoder_target_modules", text)):
        values[option] = _present_targets(getattr(defaults, option), names)
    return values


def _unranked_dim(modules: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """A rank for LoKr modules saved without decomposed factors: one this large never decomposes them."""
    return max((max(t.shape) for tensors in modules for t in tensors.values() if t.dim() >= 2), default=1)


def _te_names(modules: Iterable[str]) -> list[str]:
    return [name for name in modules if name.startswith(TEXT_ENCODER_PREFIXES)]


def _te_prefix(name: str) -> str:
    """Which text encoder a module is in: kohya's lora_te / lora_te1 / lora_te2, diffusers' text_encoder[_2]."""
    kohya = re.match(r"lora_te\d*", name)
    return kohya.group(0) if kohya else name.split(".")[0]


def _present_targets(defaults: list[str], names: list[str]) -> list[str]:
    """The default target modules the file adapts (a file trained on fewer loads); all if none match."""
    present = [t for t in defaults if any(n.endswith(("_" + t.replace(".", "_"), "." + t)) for n in names)]
    return present or list(defaults)


def _network_args(metadata: Mapping[str, str]) -> dict[str, str]:
    """kohya's ss_network_args (a JSON object of strings); {} when absent or malformed."""
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in args.items()} if isinstance(args, dict) else {}


def _flag(text: str | None) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")


def _family_options(family: str, modules: Mapping[str, Mapping[str, torch.Tensor]], args: dict[str, str]) -> dict:
    """LyCORIS options: use_tucker also when the file has Tucker cores; LoKr's factor and decompose_both."""
    if family not in ("loha", "lokr"):
        return {}
    has_core = any(s in ("hada_t1", "lokr_t2") for tensors in modules.values() for s in tensors)
    options: dict[str, Any] = {"use_tucker": has_core or _flag(args.get("use_tucker"))}
    if family == "lokr":
        factor = _number(args.get("factor"), int)
        options |= {"factor": -1 if factor is None else factor, "decompose_both": _flag(args.get("decompose_both"))}
    return options


# ----------------------------------------------------------- A1111 hypernetwork files
def _hypernetwork_file(path: Path, fail: Fail) -> NetworkFile:
    data, widths = read_hypernetwork_file(path, fail)
    options = _hypernetwork_options(data, widths, fail)
    config = _network_config(fail, name="hypernetwork", train_text_encoder=False, module=options)
    return NetworkFile(path=path, family="hypernetwork", config=config, metadata=_hypernetwork_metadata(data))


def _hypernetwork_options(data: dict, widths: list[int], fail: Fail) -> dict[str, Any]:
    """The Hypernetwork options from A1111's header, with A1111's defaults for fields older files lack."""
    init = re.sub(r"(?<!^)([A-Z])", r"_\1", str(data.get("weight_initialization") or "Normal")).lower()
    try:
        return {
            "_target_": TARGETS["hypernetwork"],
            "layer_structure": [float(s) for s in data.get("layer_structure") or [1, 2, 1]],
            "activation": str(data.get("activation_func") or "linear").lower(),
            "layer_norm": bool(data.get("is_layer_norm", False)),
            "dropout": bool(data.get("use_dropout", False)),
            "last_layer_dropout": bool(data.get("last_layer_dropout", False)),
            "activate_output": bool(data.get("activate_output", True)),
            "weight_init": init if init in WEIGHT_INITS else "normal",  # only the init: the file sets the weights
            "sizes": widths,
        }
    except (TypeError, ValueError) as error:
        fail(f"its header is malformed ({error})")


def _hypernetwork_metadata(data: dict) -> dict[str, str]:
    """kohya-style facts from the header: ss_steps from A1111's step, the rest from our optional_info."""
    metadata = {"ss_steps": str(data["step"])} if isinstance(data.get("step"), int) else {}
    try:
        info = json.loads(data.get("optional_info") or "{}")
    except (TypeError, ValueError):
        info = {}
    if isinstance(info, dict):
        metadata |= {str(k): str(v) for k, v in info.items() if str(k).startswith("ss_")}
    return metadata


__all__ = ["NetworkFile", "inspect_network_file", "network_config_for_file"]
