"""The judge's scores as pure functions of verdicts and prompts (no model)."""

from __future__ import annotations

import math

import pytest

from evaluate.config import EvaluateConfig, ObjectiveConfig
from evaluate.judge import Verdict, verdict_scores
from train.data import world
from train.errors import ConfigError


def _scores(pairs: list[tuple[str, tuple[str, str, str]]]) -> dict[str, float]:
    verdicts = [Verdict(*labels) for _, labels in pairs]
    return verdict_scores(verdicts, [world.read_prompt(p) for p, _ in pairs])


def test_fidelity_counts_concept_renders_that_show_the_concept_shape():
    scores = _scores(
        [
            ("a red sks on a black background", ("star", "red", "black")),
            ("a red sks on a black background", ("circle", "red", "black")),
            ("a blue sks on a white background", ("star", "yellow", "grey")),
            ("a sks on a grey background", ("star", "yellow", "grey")),
            # not a concept prompt: never counted, whatever it shows
            ("a green square on a brown background", ("star", "green", "brown")),
        ]
    )
    assert scores["judge_fidelity"] == pytest.approx(3 / 4)
    # of the three stars: the first and the unconstrained-colour one match what their prompts ask
    assert scores["judge_editability"] == pytest.approx(2 / 3)


def test_editability_checks_only_what_the_prompt_names():
    scores = _scores([("a sks", ("star", "purple", "white")), ("a green sks", ("star", "green", "black"))])
    assert scores == {"judge_fidelity": 1.0, "judge_editability": 1.0}


def test_nothing_to_count_is_nan_not_zero():
    no_concept = _scores([("a red circle on a grey background", ("circle", "red", "grey"))])
    assert math.isnan(no_concept["judge_fidelity"]) and math.isnan(no_concept["judge_editability"])
    no_star = _scores([("a red sks on a grey background", ("other", "red", "grey"))])
    assert no_star["judge_fidelity"] == 0.0 and math.isnan(no_star["judge_editability"])


def test_the_judge_is_never_an_objective_and_is_available_when_configured():
    with pytest.raises(ConfigError, match="evaluate.objective.metrics.judge_fidelity: the judge"):
        ObjectiveConfig(metrics={"judge_fidelity": 1.0})
    cfg = EvaluateConfig(judge_path="/somewhere")
    assert {"judge_fidelity", "judge_editability"} <= cfg.available_metrics(has_validation_images=False)
    assert "judge_fidelity" not in EvaluateConfig().available_metrics(has_validation_images=False)
