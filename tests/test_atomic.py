"""Atomic writes give files the permissions a plain open() would, not mkstemp's 0600 / mkdtemp's 0700."""

from __future__ import annotations

import os

from train.atomic import atomic_dir, write_bytes_atomic


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    (tmp_path / "plain.bin").write_bytes(b"x")
    os.mkdir(tmp_path / "plain-dir")
    write_bytes_atomic(tmp_path / "lora.safetensors", b"x")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert _mode(tmp_path / "lora.safetensors") == _mode(tmp_path / "plain.bin")
    assert _mode(tmp_path / "model") == _mode(tmp_path / "plain-dir")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
