"""The world's groups as a user runs them: bad input is one message before any model loads."""

from __future__ import annotations

import pytest

from tests.test_cli import run_cli
from tests.test_user_errors import assert_one_message

pytestmark = pytest.mark.slow


BAD_WORLD_INPUT = {
    "concept-size": (["dataset.world.num_images=0"], "dataset.world.num_images: must be >= 1, got 0"),
    "concept-repeats": (["dataset.world.repeats=-1"], "dataset.world.repeats: must be >= 1, got -1"),
    "judge-path": (["evaluate.judge_path=/nonexistent/judge"], "evaluate.judge_path: /nonexistent/judge does not exist"),
    "world-dir": (["paths.world_dir=/nonexistent/world"], "evaluate.clip_path: /nonexistent/world/world-clip does not exist"),
    "judge-objective": (
        ["++evaluate.objective.metrics.judge_fidelity=1"],
        "evaluate.objective.metrics.judge_fidelity: the judge is the world's ground truth",
    ),
}


@pytest.mark.parametrize("args,message", list(BAD_WORLD_INPUT.values()), ids=list(BAD_WORLD_INPUT))
def test_bad_input_to_the_world_groups_is_one_message_before_any_model_loads(tmp_path, args, message):
    groups = ["model=world", "dataset=world", "evaluate=world"]
    result = run_cli(*groups, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, cache=tmp_path / "cache")
    assert_one_message(result, message)
    assert "Loading" not in result.stderr  # neither the base model nor the CLIP was read
