"""Evaluation prompts: kohya's line options and its .txt/.toml/.json prompt files."""

from __future__ import annotations

import json

import pytest

from evaluate.config import EvaluateConfig
from evaluate.prompts import PromptSpec, load_prompts, parse_prompt_line, prompt_from_dict
from train.errors import ConfigError


def test_line_with_every_option():
    spec = parse_prompt_line("a cat, sitting --n blurry, lowres --w 512 --h 768 --d 42 --l 7.5 --s 28 --ss euler_a")
    assert spec == PromptSpec("a cat, sitting", "blurry, lowres", 512, 768, 42, 7.5, 28, "euler_a")


def test_plain_line_leaves_defaults_to_the_config():
    assert parse_prompt_line("  just a prompt  ") == PromptSpec("just a prompt")


@pytest.mark.parametrize("line", ["", "   ", "# a comment --w 5", "  # indented comment"])
def test_blank_and_comment_lines_are_skipped(line):
    assert parse_prompt_line(line) is None


def test_option_names_are_case_insensitive():
    assert parse_prompt_line("x --W 64 --L 5").guidance_scale == 5.0
    assert parse_prompt_line("x --W 64").width == 64


def test_g_is_ignored_with_a_warning_as_kohya_ignores_it_for_sd(caplog):
    # kohya's --g is FLUX's embedded guidance; its SD/SDXL sampler reads only --l (scale).
    assert parse_prompt_line("x --g 3").guidance_scale is None
    assert parse_prompt_line("x --g 3 --l 5").guidance_scale == 5.0
    assert "--g" in caplog.text and "--l" in caplog.text
    assert prompt_from_dict({"prompt": "x", "guidance_scale": 3.0}).guidance_scale is None


def test_empty_negative_prompt_is_allowed():
    assert parse_prompt_line("x --n").negative_prompt == ""


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("x --w abc", "--w"),
        ("x --h -64", "--h"),
        ("x --d 5x", "--d"),
        ("x --s -3", "--s"),
        ("x --l nan", "--l"),
        ("x --l -1", "--l"),
        ("x --ss nope", "--ss"),
        ("x --w", "--w"),
        ("a (red:1.2.3) cat", "prompt"),  # kohya and A1111 fail on it mid-render
        ("x --n a (b:..)", "--n"),
    ],
)
def test_bad_option_values_name_the_option(line, named):
    with pytest.raises(ConfigError, match=f"^{named}:"):
        parse_prompt_line(line)


def test_unsupported_kohya_options_are_ignored_with_a_warning(caplog):
    assert parse_prompt_line("x --cn control.png --w 64") == PromptSpec("x", width=64)
    assert "--cn" in caplog.text


def test_unknown_options_and_keys_are_warned_and_ignored_as_kohya_ignores_them(caplog):
    assert parse_prompt_line("x --q 1 --w 64") == PromptSpec("x", width=64)
    assert prompt_from_dict({"prompt": "x", "colour": "red", "width": 64}) == PromptSpec("x", width=64)
    assert "--q" in caplog.text and "colour" in caplog.text


@pytest.mark.parametrize(
    ("line", "field", "value", "says"),
    [
        ("x --w 500", "width", 496, "multiple of 8"),  # kohya: w - w % 8
        ("x --h 30", "height", 64, "64"),  # kohya: max(64, ...)
        ("x --h 0", "height", 64, "64"),
        ("x --w 512.9", "width", 512, "512"),  # kohya's regex reads the digits before the point
        ("x --d 1.5", "seed", 1, "1"),
        ("x --s 0", "steps", 1, "1"),  # kohya clamps steps to 1..1000
        ("x --s 5000", "steps", 1000, "1000"),
    ],
)
def test_values_kohya_coerces_are_coerced_with_a_warning(caplog, line, field, value, says):
    assert getattr(parse_prompt_line(line), field) == value
    assert line.split(" --")[1].split()[0] in caplog.text and says in caplog.text


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
    with pytest.raises(ConfigError, match=r"prompts\.txt:3: --w: expected a whole number"):
        load_prompts(_cfg(prompt_file=str(path)))


def test_every_bad_line_is_reported_in_one_error(tmp_path):
    path = tmp_path / "prompts.txt"
    lines = ["red circle", "a --w wide", "# c", "b --l x --s y", "green square --d 3", "c --ss turbo", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_prompts(_cfg(prompt_file=str(path)))
    message = str(caught.value)
    assert message.startswith("evaluate.prompt_file: ") and "3 bad prompts" in message
    for where in (f"{path}:2: --w", f"{path}:4: --l", f"{path}:4: --s", f"{path}:6: --ss"):
        assert where in message
    assert f"{path}:1" not in message and f"{path}:5" not in message


def test_warnings_name_the_file_and_line(tmp_path, caplog):
    path = tmp_path / "prompts.txt"
    path.write_text("red circle\ngreen --w 100 --g 2\n", encoding="utf-8")
    assert load_prompts(_cfg(prompt_file=str(path)))[1] == PromptSpec("green", width=96)
    assert f"{path}:2: --w" in caplog.text and f"{path}:2: --g" in caplog.text


def test_bad_inline_prompt_names_its_index():
    with pytest.raises(ConfigError, match=r"evaluate\.prompts\[1\]: --s: expected a whole number"):
        load_prompts(_cfg(prompts=["ok", "bad --s x"]))


def test_missing_options_fall_back_to_kohyas_defaults_unless_the_config_sets_them():
    # kohya's sample_image_inference: 30 steps, scale 7.5; --sample_sampler defaults to ddim.
    cfg = EvaluateConfig()
    assert (cfg.num_inference_steps, cfg.guidance_scale, cfg.sampler) == (30, 7.5, "ddim")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.toml", "[prompt\nx = 1", "not valid TOML"),
        ("p.toml", "[other]\nx = 1", r"\[prompt\] table"),
        ("p.json", '[{"prompt": "x",}]', "not valid JSON .line 1"),
        ("p.json", '{"prompt": "x"}', "JSON list"),
        ("p.json", '[{"prompt": "x", "width": "wide"}]', "entry 1: width: expected a whole number"),
        ("p.json", '[{"prompt": "x", "scale": true}]', "entry 1: scale: expected a number"),
        ("p.json", '[{"seed": 1}]', "entry 1: prompt: missing"),
        ("p.yaml", "x", "unknown format"),
        ("p.txt", "# only comments\n", "no prompts found"),
    ],
)
def test_garbled_files_are_config_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"(?s)^evaluate\.prompt_file: .*{message}"):
        load_prompts(_cfg(prompt_file=str(path)))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.prompt_file: .*missing\.txt does not exist"):
        load_prompts(_cfg(prompt_file=str(tmp_path / "missing.txt")))


def test_unknown_default_sampler_is_caught_when_prompts_load():
    with pytest.raises(ConfigError, match=r"^evaluate\.sampler: unknown sampler 'fast'"):
        load_prompts(_cfg(prompts=["x"], sampler="fast"))


def test_a_prompt_file_reports_every_bad_line_at_once(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "good one --d 1\n--n only a negative\nbad seed --d x\nfine --s 4\nbad sampler --ss turbo\nbad scale --l abc\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as error:
        load_prompts(_cfg(prompt_file=str(path)))
    lines = str(error.value).splitlines()
    assert lines[0] == f"evaluate.prompt_file: 3 bad prompts in {path} (all listed):"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [f"- {path}:{n}" for n in (3, 5, 6)]
