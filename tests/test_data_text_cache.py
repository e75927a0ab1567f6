"""Per-step captions (shuffle, dropout, warm-up, wildcards) cannot come from cached text-encoder outputs.

The run stops in pre-flight, before any model is built, with one message naming the subset
key and ``train.cache_text_encoder_outputs``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import on_fast_stack
from tests.data_helpers import dataset_config, write_captioned
from train.data import read_blueprints, scan_records, text_cache_problems

ROOT = Path(__file__).resolve().parents[1]


def _records(tmp_path: Path, subset_lines: str, caption: str = "a, b, c"):
    write_captioned(tmp_path / "imgs", "x", caption)
    path = tmp_path / "dataset.toml"
    text = f"[general]\ncaption_extension = '.txt'\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{tmp_path / 'imgs'}'\n"
    path.write_text(text + subset_lines + "\n", encoding="utf-8")
    return scan_records(read_blueprints(dataset_config(dataset_config=str(path))))


@pytest.mark.parametrize(
    "line",
    [
        "shuffle_caption = true",
        "caption_tag_dropout_rate = 0.1",
        "caption_dropout_rate = 0.1",
        "caption_dropout_every_n_epochs = 2",
        "token_warmup_step = 10",
    ],
)
def test_per_step_caption_option_is_a_problem_with_cached_text(tmp_path, line):
    records = _records(tmp_path, line)
    key = line.split(" =")[0]
    [problem] = text_cache_problems(records, cache_text_encoder_outputs=True)
    assert key in problem and str(tmp_path / "imgs") in problem
    assert "train.cache_text_encoder_outputs=false" in problem
    assert text_cache_problems(records, cache_text_encoder_outputs=False) == []


def test_wildcards_are_a_problem_only_when_a_caption_has_a_choice(tmp_path):
    assert text_cache_problems(_records(tmp_path, "enable_wildcard = true"), True) == []
    [problem] = text_cache_problems(_records(tmp_path, "enable_wildcard = true", "a, {b|c}"), True)
    assert "enable_wildcard" in problem
    [problem] = text_cache_problems(_records(tmp_path, "caption_prefix = '{x|y}'\nenable_wildcard = true"), True)
    assert "enable_wildcard" in problem


def test_fixed_caption_options_work_with_cached_text(tmp_path):
    records = _records(tmp_path, "caption_prefix = 'p,'\ncaption_suffix = ', s'\nsecondary_separator = ';;;'")
    assert text_cache_problems(records, True) == []


@pytest.mark.slow
def test_cli_stops_before_any_model_with_both_keys(tmp_path):
    write_captioned(tmp_path / "imgs", "x", "a, b, c")
    toml_path = tmp_path / "dataset.toml"
    toml_path.write_text(
        "[general]\ncaption_extension = '.txt'\nresolution = 64\n"
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\nshuffle_caption = true\n",
        encoding="utf-8",
    )
    env = {**os.environ, "LORA_SWEEP_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    args = [
        "dataset=kohya_toml",
        f"dataset.dataset_config={toml_path}",
        "dataset.bucket_reso_steps=16",
        "dataset.min_bucket_reso=32",
        "train.cache_text_encoder_outputs=true",
        "train.max_train_steps=1",
        "evaluate=none",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "train", *on_fast_stack(args)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "train.cache_text_encoder_outputs" in result.stderr and "shuffle_caption" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "cache" / "models").exists()  # stopped before any model was built
