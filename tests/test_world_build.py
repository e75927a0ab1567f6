"""The world's build records what it finished, part by part (the parts themselves are stubbed: no training)."""

from __future__ import annotations

import json

import pytest

from evaluate import world_build


def test_a_build_stopped_by_a_failing_part_still_records_the_parts_it_finished(tmp_path, monkeypatch):
    def judge(out, settings):
        (out / world_build.JUDGE_DIR).mkdir(parents=True)
        (out / world_build.JUDGE_DIR / "model.safetensors").write_bytes(b"judge")

    def vae(out, settings):
        raise RuntimeError("killed")

    monkeypatch.setattr(world_build, "BUILDERS", {**world_build.BUILDERS, "judge": judge, "vae": vae})
    with pytest.raises(RuntimeError, match="killed"):
        world_build.build(tmp_path, ["judge", "vae"], world_build.BuildSettings())
    record = json.loads((tmp_path / "BUILD.json").read_text())
    assert set(record["seconds"]) == {"judge"}
    assert list(record["files"]) == [f"{world_build.JUDGE_DIR}/model.safetensors"]


def test_a_later_build_of_some_parts_keeps_the_seconds_of_the_others(tmp_path, monkeypatch):
    def part(out, settings):
        (out / world_build.CLIP_DIR).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(world_build, "BUILDERS", {name: part for name in world_build.PARTS})
    (tmp_path / "BUILD.json").write_text(json.dumps({"seconds": {"judge": 339.0, "vae": 2300.0}}))
    record = world_build.build(tmp_path, ["clip", "aesthetic"], world_build.BuildSettings())
    assert set(record["seconds"]) == {"judge", "vae", "clip", "aesthetic"} and record["seconds"]["vae"] == 2300.0
    assert record == json.loads((tmp_path / "BUILD.json").read_text())
