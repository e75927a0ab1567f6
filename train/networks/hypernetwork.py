"""A1111-style hypernetworks: small residual MLPs on the contexts every attention projects to K and V.

A1111 feeds ``k_mlp(context)`` to ``to_k`` and ``v_mlp(context)`` to ``to_v`` in every CrossAttention,
self-attention included, with one (k, v) pair per context width. The modules are built layer for layer
as A1111's ``HypernetworkModule``, because ComfyUI rebuilds the MLP from the file's ``linear.N`` keys
alone. Forward pre-hooks on ``to_k`` / ``to_v`` run them under any attention processor and leave the
U-Net's own weights untouched; the modules live in the U-Net, so ``.to()`` and ``deepcopy`` carry them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from train.atomic import write_bytes_atomic
from train.config import NetworkConfig
from train.errors import ConfigError
from train.networks.base import WEIGHTS_KEY, Network, NetworkTargets, forked_seed, freeze

# The activations both A1111 and ComfyUI build by name; "linear" adds no layer at all.
ACTIVATIONS: dict[str, type[nn.Module] | None] = {"linear": None, "swish": nn.Hardswish}
ACTIVATIONS |= {n.lower(): getattr(nn, n) for n in ("ReLU", "LeakyReLU", "ELU", "Tanh", "Sigmoid", "Softsign", "Mish")}
# torch.nn.init's names; the file stores A1111's spelling of them (KaimingUniform, ...).
WEIGHT_INITS = ("normal", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")
DROPOUT_P = 0.3
SUBMODULE = "hypernetwork"
Fail = Callable[[str], NoReturn]


def _bad(key: str, message: str) -> NoReturn:
    raise ConfigError(f"network.module.{key}: {message}")


def dropout_structure(layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's parse_dropout_structure: entry i + 1 is the dropout after Linear i."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    middle = [DROPOUT_P] * (len(layer_structure) - 3)
    return [0.0, *middle, DROPOUT_P if last_layer_dropout else 0.0, 0.0]


class HypernetworkModule(nn.Module):
    """A1111's HypernetworkModule: ``x + linear(x) * multiplier``; multiplier None passes x through."""

    def __init__(self, dim: int, net: Hypernetwork):
        super().__init__()
        structure, layers = net.layer_structure, []
        for i in range(len(structure) - 1):
            width = int(dim * structure[i + 1])
            layers.append(nn.Linear(int(dim * structure[i]), width))
            is_last = i == len(structure) - 2
            if ACTIVATIONS[net.activation] is not None and (not is_last or net.activate_output):
                layers.append(ACTIVATIONS[net.activation]())
            if net.layer_norm:
                layers.append(nn.LayerNorm(width))
            if net.dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(p=net.dropout_structure[i + 1]))
        self.linear = nn.Sequential(*layers)
        self.multiplier: float | None = 1.0
        for layer in self.linear:
            if isinstance(layer, nn.Linear | nn.LayerNorm):
                _init_layer(layer, net.weight_init, net.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier is None:
            return x
        return x + self.linear(x) * self.multiplier


def _init_layer(layer: nn.Linear | nn.LayerNorm, weight_init: str, activation: str) -> None:
    # A1111 gives LayerNorm the Normal init whatever weight_init says.
    scheme = "normal" if isinstance(layer, nn.LayerNorm) else weight_init
    options = {"mean": 0.0, "std": 0.01} if scheme == "normal" else {}
    if scheme.startswith("kaiming"):
        options["nonlinearity"] = "leaky_relu" if activation == "leakyrelu" else "relu"
    with torch.no_grad():
        getattr(nn.init, f"{scheme}_")(layer.weight, **options)
        nn.init.zeros_(layer.bias)


class ContextHook:
    """Pre-hook on to_k / to_v; an object, not a closure, so a deepcopied U-Net's hooks use the copy's modules."""

    def __init__(self, module: HypernetworkModule):
        self.module = module

    def __call__(self, _projection: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        # fp32 modules over an fp16/bf16 base, as A1111 runs them.
        context, dtype = args[0], self.module.linear[0].weight.dtype
        return (self.module(context.to(dtype)).to(context.dtype), *args[1:])


def read_hypernetwork_file(path: str | os.PathLike, fail: Fail) -> tuple[dict, list[int]]:
    """An A1111 hypernetwork file (never unpickled beyond weights_only) and its context widths."""
    if not Path(path).is_file():
        fail("no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors alike
        fail(f"not a hypernetwork file: torch.load(weights_only=True) fails on it ({type(error).__name__})")
    widths = sorted(k for k in data if type(k) is int) if isinstance(data, dict) else []
    if not widths:
        fail("not a hypernetwork file (no width keys)")
    return data, widths


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _bad(key, f"must be true or false, got {value!r}")
    return value


def _check_cfg(cfg: NetworkConfig) -> None:
    if cfg.train_text_encoder:
        raise ConfigError("network.train_text_encoder: a hypernetwork only changes the U-Net's attention contexts")
    for key in ("network_dropout", "rank_dropout", "module_dropout"):
        if getattr(cfg, key) is not None:
            raise ConfigError(f"network.{key}: not a hypernetwork option; use network.module.dropout")
    if cfg.scale_weight_norms is not None:
        raise ConfigError("network.scale_weight_norms: the Hypernetwork network has no max-norm")


def _positive_numbers(key: str, value: Any, kinds: tuple[type, ...]) -> list:
    if isinstance(value, str) or not isinstance(value, Sequence):
        _bad(key, f"must be a list, got {value!r}")
    items = list(value)
    if not all(isinstance(v, kinds) and not isinstance(v, bool) and v > 0 for v in items):
        _bad(key, f"every entry must be a positive {'/'.join(k.__name__ for k in kinds)}, got {items}")
    return items


class Hypernetwork(Network):
    """A1111 hypernetwork: a (k, v) module pair per attention context width, saved as A1111's .pt."""

    file_suffix = ".pt"

    def __init__(
        self,
        cfg: NetworkConfig,
        layer_structure: Sequence[float] = (1, 2, 1),
        activation: str = "linear",
        layer_norm: bool = False,
        dropout: bool = False,
        last_layer_dropout: bool = False,
        activate_output: bool = False,
        weight_init: str = "normal",
        sizes: Sequence[int] | None = None,
    ):
        super().__init__(cfg)
        _check_cfg(cfg)
        structure = _positive_numbers("layer_structure", layer_structure, (int, float))
        if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
            _bad("layer_structure", f"must start and end with 1 and have at least 2 entries, got {structure}")
        if activation not in ACTIVATIONS:
            _bad("activation", f"must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if weight_init not in WEIGHT_INITS:
            _bad("weight_init", f"must be one of {sorted(WEIGHT_INITS)}, got {weight_init!r}")
        self.layer_structure = [float(s) for s in structure]
        self.activation, self.weight_init = activation, weight_init
        self.layer_norm = _flag("layer_norm", layer_norm)
        self.activate_output = _flag("activate_output", activate_output)
        self.use_dropout, last = _flag("dropout", dropout), _flag("last_layer_dropout", last_layer_dropout)
        self.dropout_structure = dropout_structure(self.layer_structure, self.use_dropout, last)
        self.sizes = None if sizes is None else sorted(set(_positive_numbers("sizes", sizes, (int,))))
        self.layers: nn.ModuleDict | None = None

    def _widths(self, found: list[int]) -> list[int]:
        widths = found if self.sizes is None else [w for w in self.sizes if w in found]
        if not widths:
            _bad("sizes", f"none of {self.sizes} is an attention context width of this U-Net (found {found})")
        for width in widths:
            if any(int(width * s) < 1 for s in self.layer_structure):
                _bad("layer_structure", f"{self.layer_structure} gives an empty layer at width {width}")
        return widths

    def apply(self, targets: NetworkTargets, seed: int) -> dict[str, list[nn.Parameter]]:
        unet = targets.unet
        if SUBMODULE in unet._modules:
            raise RuntimeError("Hypernetwork.apply: this U-Net already has a hypernetwork")
        freeze(targets)
        from diffusers.models.attention_processor import Attention  # with the model: reading a file needs no diffusers

        attentions = [m for m in unet.modules() if isinstance(m, Attention) and m.to_k is not None]
        widths = self._widths(sorted({a.to_k.in_features for a in attentions}))
        with forked_seed(seed):
            pairs = {str(w): nn.ModuleList([HypernetworkModule(w, self), HypernetworkModule(w, self)]) for w in widths}
        device = next(unet.parameters()).device
        layers = nn.ModuleDict(pairs).to(device=device, dtype=torch.float32).train(unet.training)
        unet.add_module(SUBMODULE, layers)
        for attention in attentions:
            for index, projection in enumerate((attention.to_k, attention.to_v)):
                pair = pairs.get(str(projection.in_features))
                if pair is not None:
                    projection.register_forward_pre_hook(ContextHook(pair[index]))
        params = list(layers.requires_grad_(True).parameters())
        self.targets, self.layers = targets, layers
        return {"unet": params, "text_encoder": []}

    def _applied(self) -> nn.ModuleDict:
        if self.layers is None:
            raise RuntimeError("Hypernetwork: apply() it to a U-Net first")
        return self.layers

    def _header(self, path: str | os.PathLike, metadata: Mapping[str, object]) -> dict[str, Any]:
        info = {k: v for k, v in metadata.items() if k.startswith("ss_")}
        steps, model_hash, model_name = (
            info.pop(k, None) for k in ("ss_steps", "ss_new_sd_model_hash", "ss_sd_model_name")
        )
        return {
            "step": int(steps) if str(steps).isdigit() else 0,
            "name": str(info.pop("ss_output_name", Path(path).stem)),
            "layer_structure": list(self.layer_structure),
            "activation_func": self.activation,
            "is_layer_norm": self.layer_norm,
            "weight_initialization": "".join(part.capitalize() for part in self.weight_init.split("_")),
            "use_dropout": self.use_dropout,
            "dropout_structure": list(self.dropout_structure),
            # As A1111 writes it: derived from the structure, so it is False without dropout.
            "last_layer_dropout": self.dropout_structure[-2] != 0,
            "activate_output": self.activate_output,
            "sd_checkpoint": None if model_hash is None else str(model_hash)[:10],
            "sd_checkpoint_name": None if model_name is None else str(model_name),
            "optional_info": json.dumps({k: _as_text(v) for k, v in info.items()}) if info else None,
        }

    def save(self, path: str | os.PathLike, metadata: Mapping[str, object]) -> None:
        data: dict[Any, Any] = {int(w): tuple(_plain_state(m) for m in pair) for w, pair in self._applied().items()}
        data.update(self._header(path, metadata))
        buffer = io.BytesIO()
        torch.save(data, buffer)
        write_bytes_atomic(path, buffer.getvalue())

    def _check_layout(self, data: dict, fail: Fail) -> None:
        # A1111's defaults for files that predate a field.
        structure = data.get("layer_structure", [1, 2, 1])
        use, last = data.get("use_dropout", False), data.get("last_layer_dropout", False)
        file_dropout = data.get("dropout_structure") or dropout_structure(structure, use, last)
        fields = {
            "layer structure": ([float(s) for s in structure], self.layer_structure),
            "activation": (data.get("activation_func") or "linear", self.activation),
            "layer norm": (bool(data.get("is_layer_norm", False)), self.layer_norm),
            "activate_output": (bool(data.get("activate_output", True)), self.activate_output),
            "dropout structure": ([float(p) for p in file_dropout], self.dropout_structure),
        }
        for name, (theirs, ours) in fields.items():
            if theirs != ours:
                fail(f"its {name} is {theirs}, the config's is {ours}")

    def load(self, path: str | os.PathLike, key: str = WEIGHTS_KEY) -> None:
        layers = self._applied()

        def fail(problem: str) -> NoReturn:
            raise ConfigError(f"{key}: {path}: {problem}")

        data, widths = read_hypernetwork_file(path, fail)
        if widths != sorted(int(w) for w in layers):
            fail(f"it has modules for widths {widths}, this U-Net's hypernetwork for {sorted(map(int, layers))}")
        try:
            self._check_layout(data, fail)
        except (TypeError, ValueError) as error:
            fail(f"its header is malformed ({error})")
        staged = [(m, _checked_state(m, data[w], i, w, fail)) for w in widths for i, m in enumerate(layers[str(w)])]
        for module, state in staged:
            module.load_state_dict(state)

    @contextlib.contextmanager
    def strength(self, multiplier: float | None) -> Iterator[None]:
        modules = [m for pair in self._applied().values() for m in pair]
        saved = [m.multiplier for m in modules]
        try:
            for module in modules:
                module.multiplier = multiplier
            yield
        finally:
            for module, value in zip(modules, saved, strict=True):
                module.multiplier = value


def _as_text(value: object) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # A plain dict of CPU tensors: what torch.load(weights_only=True) and ComfyUI's safe_load accept.
    return {name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()}


def _checked_state(module: nn.Module, pair: Any, index: int, width: int, fail: Fail) -> dict[str, torch.Tensor]:
    where = f"width {width} {'kv'[index]} module"
    if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[index], dict):
        fail(f"width {width} is not a (k, v) pair of state dicts")
    state, expected = pair[index], module.state_dict()
    if set(state) != set(expected):
        fail(f"{where}: keys {sorted(state)}, expected {sorted(expected)}")
    for name, tensor in expected.items():
        if not isinstance(state[name], torch.Tensor) or state[name].shape != tensor.shape:
            got = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
            fail(f"{where}: {name} is {got}, expected shape {tuple(tensor.shape)}")
    return state
