"""Atomic file and folder writes: write to a temporary name, then rename.

A crash mid-write leaves at worst a stray temporary file, never a half-written
checkpoint, cache entry or model folder under the final name. ``check_writable_dir``
proves a folder can take files before any work is spent on what goes there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from train.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700; the final file must get what a plain open() would
# give (0644 under the usual umask), or a UI running as another user cannot read it.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it into place on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it into place on success.

    If another process created ``path`` meanwhile, its copy wins and ours is dropped.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(DIR_MODE)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replacing_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like ``atomic_dir``, but what is at ``path`` is replaced (a rebuild): moved aside, then removed."""
    final = Path(path)
    with atomic_dir(final.with_name(f".{final.name}.new")) as tmp:
        yield tmp
    new = final.with_name(f".{final.name}.new")
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable_dir(path: str | Path, key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there; else one ConfigError naming ``key``."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        where = err.filename or path
        raise ConfigError(f"{key}: cannot write to {path} ({where}: {err.strerror or err})") from None
    return path
