"""Evaluation prompts: kohya's line options and its .txt/.toml/.json prompt files."""

from __future__ import annotations

import json

import pytest

from evaluate.config import EvaluateConfig
from evaluate.prompts import PromptSpec, load_prompts, parse_prompt_line
from train.errors import ConfigError


def test_line_with_every_option():
    spec = parse_prompt_line("a cat, sitting --n blurry, lowres --w 512 --h 768 --d 42 --l 7.5 --s 28 --ss euler_a")
    assert spec == PromptSpec("a cat, sitting", "blurry, lowres", 512, 768, 42, 7.5, 28, "euler_a")


def test_plain_line_leaves_defaults_to_the_config():
    assert parse_prompt_line("  just a prompt  ") == PromptSpec("just a prompt")


@pytest.mark.parametrize("line", ["", "   ", "# a comment --w 5", "  # indented comment"])
def test_blank_and_comment_lines_are_skipped(line):
    assert parse_prompt_line(line) is None


def test_option_names_are_case_insensitive_and_g_is_a_fallback_for_l():
    assert parse_prompt_line("x --W 64 --g 3").guidance_scale == 3.0
    assert parse_prompt_line("x --g 3 --L 5").guidance_scale == 5.0
    assert parse_prompt_line("x --W 64").width == 64


def test_empty_negative_prompt_is_allowed():
    assert parse_prompt_line("x --n").negative_prompt == ""


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("x --w abc", "--w"),
        ("x --h 0", "--h"),
        ("x --d 1.5", "--d"),
        ("x --s -3", "--s"),
        ("x --l nan", "--l"),
        ("x --ss nope", "--ss"),
        ("x --q 1", "--q"),
        ("x --w", "--w"),
    ],
)
def test_bad_option_values_name_the_option(line, named):
    with pytest.raises(ConfigError, match=f"^{named}:"):
        parse_prompt_line(line)


def test_unsupported_kohya_options_are_ignored_with_a_warning(caplog):
    assert parse_prompt_line("x --cn control.png --w 64") == PromptSpec("x", width=64)
    assert "--cn" in caplog.text


def _cfg(**kwargs) -> EvaluateConfig:
    return EvaluateConfig(**kwargs)


def test_txt_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# header\n\nred circle --d 5\n  \ngreen square --n ugly --s 4\n", encoding="utf-8")
    assert load_prompts(_cfg(prompt_file=str(path))) == [
        PromptSpec("red circle", seed=5),
        PromptSpec("green square", negative_prompt="ugly", steps=4),
    ]


def test_toml_file_merges_subsets_over_the_prompt_table(tmp_path):
    path = tmp_path / "prompts.toml"
    path.write_text(
        """
[prompt]
negative_prompt = "lowres"
width = 64
height = 64
scale = 5.0
sample_steps = 4

[[prompt.subset]]
prompt = "red circle"
seed = 1

[[prompt.subset]]
prompt = "green square"
width = 128
sample_sampler = "ddim"
""",
        encoding="utf-8",
    )
    assert load_prompts(_cfg(prompt_file=str(path))) == [
        PromptSpec("red circle", "lowres", 64, 64, 1, 5.0, 4, None),
        PromptSpec("green square", "lowres", 128, 64, None, 5.0, 4, "ddim"),
    ]


def test_json_file_takes_dicts_and_lines(tmp_path):
    path = tmp_path / "prompts.json"
    entries = [{"prompt": "red circle", "seed": 3, "scale": 6}, "green square --w 64"]
    path.write_text(json.dumps(entries), encoding="utf-8")
    assert load_prompts(_cfg(prompt_file=str(path))) == [
        PromptSpec("red circle", seed=3, guidance_scale=6.0),
        PromptSpec("green square", width=64),
    ]


def test_inline_prompts_carry_options():
    prompts = load_prompts(_cfg(prompts=["red circle", "a triangle --n blurry --d 7"]))
    assert prompts == [PromptSpec("red circle"), PromptSpec("a triangle", negative_prompt="blurry", seed=7)]


def test_bad_value_in_a_file_names_the_file_line_and_option(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# c\nred circle\ngreen --w wide\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"evaluate\.prompt_file: .*prompts\.txt line 3: --w: expected a whole number"
    ):
        load_prompts(_cfg(prompt_file=str(path)))


def test_bad_inline_prompt_names_its_index():
    with pytest.raises(ConfigError, match=r"evaluate\.prompts\[1\]: --s: must be >= 1"):
        load_prompts(_cfg(prompts=["ok", "bad --s 0"]))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.toml", "[prompt\nx = 1", "not valid TOML"),
        ("p.toml", "[other]\nx = 1", r"\[prompt\] table"),
        ("p.json", '[{"prompt": "x",}]', "not valid JSON .line 1"),
        ("p.json", '{"prompt": "x"}', "JSON list"),
        ("p.json", '[{"prompt": "x", "width": "wide"}]', "entry 1: width: expected a whole number"),
        ("p.json", '[{"prompt": "x", "colour": 1}]', "entry 1: colour: unknown key"),
        ("p.json", '[{"seed": 1}]', "entry 1: prompt: missing"),
        ("p.yaml", "x", "unknown format"),
        ("p.txt", "# only comments\n", "no prompts found"),
    ],
)
def test_garbled_files_are_config_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^evaluate\.prompt_file: .*{message}"):
        load_prompts(_cfg(prompt_file=str(path)))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.prompt_file: .*missing\.txt does not exist"):
        load_prompts(_cfg(prompt_file=str(tmp_path / "missing.txt")))


def test_unknown_default_sampler_is_caught_when_prompts_load():
    with pytest.raises(ConfigError, match=r"^evaluate\.sampler: unknown sampler 'fast'"):
        load_prompts(_cfg(prompts=["x"], sampler="fast"))
