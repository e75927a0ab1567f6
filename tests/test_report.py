"""The study report on a multi-objective study built in memory: objectives by name, the Pareto front."""

from __future__ import annotations

import optuna

from sweeper.report.report import leaderboard, ranked_trials, render_report
from sweeper.results.locate import locate_study
from tests.test_promote import MULTI, add_trial


def test_multi_objective_report_names_objectives_and_plots_the_pareto_front(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="m", storage=url, directions=["maximize", "maximize"])
    add_trial(study, tmp_path, [0.30, 5.0], {"clip_t": 0.30, "aesthetic": 5.0})
    add_trial(study, tmp_path, [0.10, 4.0], {"clip_t": 0.10, "aesthetic": 4.0})  # dominated
    add_trial(study, tmp_path, [0.20, 6.0], {"clip_t": 0.20, "aesthetic": 6.0})
    ref = locate_study([f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=m", "logger=none", *MULTI])

    assert [t.number for t in ranked_trials(ref.study)] == [0, 2, 1]  # the front first
    board = leaderboard(ref)
    assert board.columns[:4] == ["#", "state", "clip_t", "aesthetic"]
    assert [row["cells"][0][0] for row in board.rows] == ["0", "2", "1"]

    page = render_report(ref, tmp_path / "r.html").read_text()
    assert "Pareto front" in page and "Optimization history (clip_t)" in page and "Slice (aesthetic)" in page
    assert "No trial recorded its renders yet" in page  # these trials kept no images: said, not hidden
    assert "Intermediate values" not in page  # Optuna cannot prune multi-objective studies
