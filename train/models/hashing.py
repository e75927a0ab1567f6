"""Content hashes of base-model weights, cached so a 2 GB file is read once.

A file's sha256 is stored in a sidecar JSON beside it, keyed by the file's
absolute path, size and mtime; any change to the file makes the sidecar stale.
When the model folder is read-only the hash is only memoised in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from train.atomic import write_bytes_atomic

CHUNK_BYTES = 16 * 1024 * 1024
_MEMO: dict[tuple[str, int, int], str] = {}


def sidecar_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256.json")


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _read_sidecar(path: Path, key: tuple[str, int, int]) -> str | None:
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if (record.get("path"), record.get("size"), record.get("mtime_ns")) != key:
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def _write_sidecar(path: Path, key: tuple[str, int, int], digest: str) -> None:
    record = {"path": key[0], "size": key[1], "mtime_ns": key[2], "sha256": digest}
    try:
        write_bytes_atomic(sidecar_path(path), json.dumps(record).encode("utf-8"))
    except OSError:
        pass  # read-only model folder: the in-process memo still saves re-hashing


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in chunks; cached by (path, size, mtime)."""
    file = Path(path)
    key = _file_key(file)
    digest = _MEMO.get(key) or _read_sidecar(file, key)
    if digest is None:
        hasher = hashlib.sha256()
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        _write_sidecar(file, key, digest)
    _MEMO[key] = digest
    return digest


def files_sha256(files: Iterable[Path], root: Path) -> str:
    """One sha256 over several files: each file's relative path and hash, in the given order."""
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(f"{file.relative_to(root).as_posix()} {file_sha256(file)}\n".encode())
    return hasher.hexdigest()


def module_identity(module: torch.nn.Module, length: int = 16) -> str:
    """Short hash of a module's config and weights: equal weights give equal ids, however they were loaded."""
    hasher = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        hasher.update(json.dumps(public, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        hasher.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()[:length]
