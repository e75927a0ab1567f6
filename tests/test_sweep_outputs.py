"""What a finished sweep leaves for people: trial records, status, report, promotion, TensorBoard, dashboard.

All of it runs on one real sweep (the session's ``fault_sweep``: 2 complete,
1 pruned, 2 failed trials), through the same commands users type.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweeper.__main__ import main
from tests.services import chromium_executable, free_port
from tests.sweeps import ROOT, load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(fault_sweep):
    sweep_dir, result = fault_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_trials_record_their_best_checkpoint(sweep):
    trials = {t.number: t for t in load(sweep).get_trials()}
    for number in (3, 4):
        best = trials[number].user_attrs["best"]
        checkpoint = Path(best["checkpoint"])
        assert checkpoint.parent == sweep / str(number) / "checkpoints"
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == best["sha256"]
        assert best["step"] in (3, 6) and best["value"] == pytest.approx(trials[number].value)
        assert {"val_loss", "clip_t", "clip_i", "aesthetic"} <= set(best["scores"])
        assert best["demo_weights"] and len(best["base_model_hash"]) == 64
        assert Path(best["grid"]).is_file()
        assert [(i["prompt"], i["seed"]) for i in best["images"]]  # one per prompt x seed at the scored strength
        assert all(Path(i["path"]).is_file() for i in best["images"])
    assert "best" not in trials[1].user_attrs  # diverged at step 2, before its first evaluation


def test_status_lists_every_trial_with_its_reason(sweep, capsys):
    assert main(["status", "sweep=demo", "--sweep-dir", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "CUDA out of memory at step 2" in out and "SIGKILL" in out and "diverged" in out
    assert out.count("COMPLETE") == 2 and "2 complete, 2 fail, 1 pruned" in out
    assert re.search(r"best trial [34]: value", out)


def test_status_without_the_sweep_overrides_names_what_is_there(sweep, capsys):
    assert main(["status", "--sweep-dir", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "no study 'lora-sweep'" in err and "it holds: demo" in err and "Traceback" not in err


def test_promote_ships_the_best_trials_best_checkpoint(sweep, tmp_path, capsys):
    registry = tmp_path / "promoted"
    args = ["promote", "sweep=demo", f"hydra.sweep.dir={sweep}", f"hydra.sweeper.promote.registry={registry}"]
    assert main([*args, "logger=none"]) == 0
    study = load(sweep)
    best = study.best_trial
    manifest = json.loads((registry / "demo" / "manifest.json").read_text())
    assert manifest["trial"] == best.number and manifest["values"] == [best.value]
    assert manifest["step"] == best.user_attrs["best"]["step"]
    assert (registry / "demo" / "demo.safetensors").read_bytes() == Path(manifest["source"]).read_bytes()
    assert manifest["params"] == best.params and manifest["demo_weights"] is True
    assert f"promoted trial {best.number}" in capsys.readouterr().out


def test_report_is_one_offline_page_with_leaderboard_grids_and_plots(sweep, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", "sweep=demo", "--sweep-dir", str(sweep), "--out", str(out)]) == 0
    page = out.read_text()
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']https?://""", page)  # nothing from the net
    assert page.count('<tr class="') == 5  # a leaderboard row per trial
    assert 'id="best-grid" src="data:image/png;base64,' in page
    assert 'id="comparison-grid" src="data:image/png;base64,' in page
    for text in ("CUDA out of memory at step 2", "SIGKILL", "diverged", "Demo weights"):
        assert text in page
    for plot in ("Optimization history", "Intermediate values", "Parameter importances", "Parallel coordinates"):
        assert plot in page
    assert page.count("Plotly.newPlot") >= 4


def test_report_renders_in_chromium_without_errors(sweep, tmp_path):
    chromium = chromium_executable()
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    assert main(["report", "sweep=demo", "--sweep-dir", str(sweep), "--out", str(out)]) == 0
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            page.goto(out.as_uri(), wait_until="load")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
            board = page.locator("#leaderboard-table")
            assert board.is_visible() and board.locator("tbody tr").count() == 5
            for grid in ("#best-grid", "#comparison-grid"):
                assert page.eval_on_selector(grid, "img => img.complete && img.naturalWidth > 0")
            # sorting by trial number puts trial 0 first, clicking again puts it last
            header = board.locator("th").first
            header.click()
            assert board.locator("tbody tr td").first.inner_text() == "0"
            header.click()
            assert board.locator("tbody tr td").first.inner_text() == "4"
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert shot.stat().st_size > 50_000


def test_tensorboard_on_the_sweep_dir_has_every_trials_hparams(sweep):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    study = load(sweep)
    for trial in study.get_trials():
        if "SIGKILL" in trial.user_attrs.get("fail_reason", ""):
            continue  # a killed worker writes nothing more
        acc = ea.EventAccumulator(str(sweep / str(trial.number) / "tensorboard"), size_guidance={ea.TENSORS: 0})
        acc.Reload()
        data = [HParamsPluginData.FromString(c) for c in acc.PluginTagToContent("hparams").values()]
        [start] = [d.session_start_info for d in data if d.HasField("session_start_info")]
        assert start.hparams["optimizer.learning_rate"].number_value == pytest.approx(
            trial.params["optimizer.learning_rate"]
        )
        assert start.hparams["network.dim"].number_value == trial.params["network.dim"]
        if trial.state == TrialState.COMPLETE:
            assert acc.Scalars("best/objective")[-1].value == pytest.approx(trial.value)


def test_dashboard_serves_the_study_on_localhost(sweep):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "dashboard", "sweep=demo", "--sweep-dir", str(sweep), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 90 s"
        assert [s["study_name"] for s in body["study_summaries"]] == ["demo"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
