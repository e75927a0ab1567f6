"""The kohya/LyCORIS network file: ss_* metadata, the sshs_* hashes, safetensors I/O.

A1111, ComfyUI and diffusers read ``.safetensors`` files whose keys are
``<kohya module name>.<suffix>`` (``lora_down.weight``, ``hada_w1_a``, ...; see
train/networks/) and whose metadata carries kohya's ``ss_*`` training facts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save

from train.atomic import write_bytes_atomic
from train.errors import ModelLoadError


def _metadata_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    # kohya writes str(value) for everything else, "None" included.
    return str(value)


def build_metadata(network: Mapping[str, object], extra: Mapping[str, object]) -> dict[str, str]:
    """kohya ``ss_*`` metadata as strings: the network's own keys, then ``extra`` (training facts) on top."""
    metadata: dict[str, object] = {"ss_v2": False, "ss_base_model_version": "sd_v1", **network}
    metadata.update(extra)
    return {key: _metadata_value(value) for key, value in metadata.items()}


def _addnet_hash_safetensors(buffer: io.BytesIO) -> str:
    """sha256 of everything after the header, as sd-webui-additional-networks hashes a file."""
    buffer.seek(0)
    header_size = int.from_bytes(buffer.read(8), "little")
    buffer.seek(header_size + 8)
    digest = hashlib.sha256()
    for chunk in iter(lambda: buffer.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _addnet_hash_legacy(buffer: io.BytesIO) -> str:
    buffer.seek(0x100000)
    return hashlib.sha256(buffer.read(0x10000)).hexdigest()[:8]


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with the metadata sorted: safetensors writes it in hash-map order,
    which changes from process to process, and equal inputs must give equal files."""
    data = save(dict(tensors), dict(metadata))
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + data[8 + header_size :]


def safetensors_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """kohya's precalculate_safetensors_hashes: hash the file as saved with only its ss_* metadata."""
    training_metadata = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    buffer = io.BytesIO(_safetensors_bytes(tensors, training_metadata))
    return _addnet_hash_safetensors(buffer), _addnet_hash_legacy(buffer)


def save_lora(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a kohya LoRA file atomically, with the sshs_* hashes A1111 shows."""
    bad = sorted(k for k, v in metadata.items() if not isinstance(v, str))
    if bad:
        raise TypeError(f"safetensors metadata values must be str; not so for {bad}")
    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = safetensors_hashes(tensors, metadata)
    write_bytes_atomic(path, _safetensors_bytes(tensors, metadata))


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; ModelLoadError naming the file if unreadable."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({error})") from error
    return tensors, dict(metadata)
