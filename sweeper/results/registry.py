"""The promotion registry: a stable place for the LoRA a study promotes, with its history.

    promoted/<study>/
      <study>.safetensors   the current promotion: the stable path consumers load
                            (<study>.pt when it is an A1111 hypernetwork)
      manifest.json         its manifest (trial, step, params, scores, hashes, time)
      history.json          every promotion, oldest first
      versions/v001/        each promotion's file and manifest, kept for good

A version folder is built under a temporary name and renamed into place, the
current file is swapped in by rename, and the JSON files are written
atomically, all under a lock: a crash or a second promoter never leaves half a
registry. Promoting what is already current changes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from train.atomic import DIR_MODE, write_bytes_atomic
from train.errors import UserError

VERSION_DIR = re.compile(r"v(\d+)")
# File suffixes of the network families (kohya/LyCORIS .safetensors, A1111 hypernetwork .pt).
NETWORK_SUFFIXES = (".safetensors", ".pt")


class PromotionRefused(UserError):
    """The file to promote is not the one the trial recorded, or the registry is inconsistent."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass
class Promotion:
    manifest: dict
    path: Path  # the current file
    changed: bool  # False: it was already the current promotion
    replaced: dict | None = None  # the manifest it replaced as current


def _write_json(path: Path, payload) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


class Registry:
    def __init__(self, root: str | os.PathLike, study_name: str):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip("._") or "study"
        self.dir = Path(root) / safe
        self.stem = safe
        self.manifest_file = self.dir / "manifest.json"
        self.history_file = self.dir / "history.json"
        self.versions = self.dir / "versions"

    @property
    def current_file(self) -> Path:
        """<study>.safetensors, or <study>.pt when the current promotion is a hypernetwork."""
        current = self.current()
        suffix = Path(current["file"]).suffix if current and current.get("file") else ".safetensors"
        return self.dir / f"{self.stem}{suffix}"

    # ------------------------------------------------------------ reading
    def current(self) -> dict | None:
        return self._read(self.manifest_file)

    def history(self) -> list[dict]:
        return self._read(self.history_file) or []

    @staticmethod
    def _read(path: Path):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise PromotionRefused(f"{path}: not readable JSON ({err}); fix or move it aside") from None

    def _next_version(self) -> int:
        # Folders count too: a promoter that died after renaming its folder must not be overwritten.
        numbers = [int(m.group(1)) for p in self.versions.glob("v*") if (m := VERSION_DIR.fullmatch(p.name))]
        numbers += [int(entry.get("version", 0)) for entry in self.history()]
        return max(numbers, default=0) + 1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.versions.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------ promoting
    def promote(self, source: Path, manifest: dict) -> Promotion:
        """Copy ``source`` in as the current promotion; ``manifest['sha256']`` must be the recorded hash."""
        source = Path(source)
        expected = manifest["sha256"]
        with self._locked():
            current = self.current()
            if current and current.get("sha256") == expected and current.get("trial") == manifest.get("trial"):
                if self.current_file.is_file() and sha256_file(self.current_file) == expected:
                    return Promotion(current, self.current_file, changed=False)
            version = self._next_version()
            final_dir = self.versions / f"v{version:03d}"
            manifest = {"version": version, **manifest, "file": f"versions/{final_dir.name}/{source.name}"}
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.versions))
            staging.chmod(DIR_MODE)
            try:
                copy = staging / source.name
                shutil.copyfile(source, copy)
                if sha256_file(copy) != expected:  # changed while copying, or a bad disk
                    raise PromotionRefused(f"{source}: the copy's sha256 differs from the recorded one; not promoted")
                _write_json(staging / "manifest.json", manifest)
                os.rename(staging, final_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._swap_current(final_dir / source.name)
            _write_json(self.manifest_file, manifest)
            _write_json(self.history_file, [*self.history(), manifest])
        return Promotion(manifest, self.dir / f"{self.stem}{source.suffix}", changed=True, replaced=current)

    def _swap_current(self, versioned: Path) -> None:
        # A hard link costs no space; a copy where links are not supported. Either way, renamed into place.
        current = self.dir / f"{self.stem}{versioned.suffix}"
        tmp = self.dir / f".{current.name}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(versioned, tmp)
        except OSError:
            shutil.copyfile(versioned, tmp)
        os.replace(tmp, current)
        for suffix in NETWORK_SUFFIXES:  # another family promoted before: one current file only
            if suffix != versioned.suffix:
                (self.dir / f"{self.stem}{suffix}").unlink(missing_ok=True)

    def annotate(self, version: int, extra: dict) -> dict:
        """Add facts learned after the copy (e.g. the W&B artifact) to a version's manifests."""
        with self._locked():
            history = self.history()
            for entry in history:
                if entry.get("version") == version:
                    entry.update(extra)
            _write_json(self.history_file, history)
            version_manifest = self.versions / f"v{version:03d}" / "manifest.json"
            manifest = {**(self._read(version_manifest) or {}), **extra}
            _write_json(version_manifest, manifest)
            current = self.current()
            if current and current.get("version") == version:
                _write_json(self.manifest_file, manifest)
        return manifest
