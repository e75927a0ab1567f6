"""Caption processing compared with kohya's ``process_caption``, draw for draw.

``kohya_process_caption`` below is a transcription of kohya-ss/sd-scripts
``library/train_util.py`` ``BaseDataset.process_caption`` (Apache-2.0), with the global
``random`` module replaced by an explicit ``random.Random`` and without textual-inversion
replacements. Our processor must give the same caption from the same rng state.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from train.data import CaptionProcessor, Subset, read_caption

KOHYA_DEFAULTS = dict(
    caption_prefix=None,
    caption_suffix=None,
    caption_dropout_rate=0.0,
    caption_dropout_every_n_epochs=0,
    enable_wildcard=False,
    shuffle_caption=False,
    token_warmup_step=0,
    token_warmup_min=1,
    caption_tag_dropout_rate=0.0,
    keep_tokens_separator="",
    keep_tokens=0,
    caption_separator=",",
    secondary_separator=None,
)


def kohya_process_caption(subset, caption, rng, current_epoch, current_step, max_train_steps):
    if subset.caption_prefix:
        caption = subset.caption_prefix + " " + caption
    if subset.caption_suffix:
        caption = caption + " " + subset.caption_suffix
    is_drop_out = subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate
    is_drop_out = (
        is_drop_out
        or subset.caption_dropout_every_n_epochs > 0
        and current_epoch % subset.caption_dropout_every_n_epochs == 0
    )
    if is_drop_out:
        return ""
    if subset.enable_wildcard:
        if "\n" in caption:
            caption = rng.choice(caption.split("\n"))
        replacer1, replacer2 = "⦅", "⦆"
        while replacer1 in caption or replacer2 in caption:
            replacer1 += "⦅"
            replacer2 += "⦆"
        caption = caption.replace("{{", replacer1).replace("}}", replacer2)
        caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
        caption = caption.replace(replacer1, "{").replace(replacer2, "}")
    else:
        caption = caption.split("\n")[0]
    if subset.shuffle_caption or subset.token_warmup_step > 0 or subset.caption_tag_dropout_rate > 0:
        fixed_tokens, flex_tokens, fixed_suffix_tokens = [], [], []
        sep = subset.keep_tokens_separator
        if sep and sep in caption:
            fixed_part, flex_part = caption.split(sep, 1)
            if sep in flex_part:
                flex_part, fixed_suffix_part = flex_part.split(sep, 1)
                fixed_suffix_tokens = [
                    t.strip() for t in fixed_suffix_part.split(subset.caption_separator) if t.strip()
                ]
            fixed_tokens = [t.strip() for t in fixed_part.split(subset.caption_separator) if t.strip()]
            flex_tokens = [t.strip() for t in flex_part.split(subset.caption_separator) if t.strip()]
        else:
            tokens = [t.strip() for t in caption.strip().split(subset.caption_separator)]
            flex_tokens = tokens[:]
            if subset.keep_tokens > 0:
                fixed_tokens = flex_tokens[: subset.keep_tokens]
                flex_tokens = tokens[subset.keep_tokens :]
        warmup = subset.token_warmup_step
        if warmup < 1:
            warmup = math.floor(warmup * max_train_steps)
        if warmup and current_step < warmup:
            tokens_len = (
                math.floor(current_step * ((len(flex_tokens) - subset.token_warmup_min) / warmup))
                + subset.token_warmup_min
            )
            flex_tokens = flex_tokens[:tokens_len]
        if subset.shuffle_caption:
            rng.shuffle(flex_tokens)
        if subset.caption_tag_dropout_rate > 0:
            flex_tokens = [t for t in flex_tokens if rng.random() >= subset.caption_tag_dropout_rate]
        caption = ", ".join(fixed_tokens + flex_tokens + fixed_suffix_tokens)
    if subset.secondary_separator:
        caption = caption.replace(subset.secondary_separator, subset.caption_separator)
    return caption


CAPTIONS = [
    "sks, girl, red hair, smile, outdoors, hat",
    "1girl, miku ||| stage, mic, {white|black} shirt, smile ||| best quality",
    "{simple|white|{{retro}}} background, sky;;;cloud;;;day, outdoors, hat",
    "first line, a, b, c\nsecond {x|y}, d, e\nthird, f",
]
SETTINGS = [
    {"shuffle_caption": True, "keep_tokens": 1},
    {"shuffle_caption": True, "keep_tokens_separator": "|||", "caption_tag_dropout_rate": 0.3},
    {"enable_wildcard": True, "shuffle_caption": True, "secondary_separator": ";;;"},
    {"enable_wildcard": True, "caption_prefix": "pre, {p|q}", "caption_suffix": ", post"},
    {"caption_dropout_rate": 0.2, "caption_tag_dropout_rate": 0.2, "enable_wildcard": True},
    {"token_warmup_step": 0.5, "token_warmup_min": 2, "shuffle_caption": True, "keep_tokens": 1},
    {"token_warmup_step": 7, "secondary_separator": ";;;", "caption_prefix": "pre |||", "keep_tokens_separator": "|||"},
    {"caption_dropout_every_n_epochs": 2, "shuffle_caption": True},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(sorted(s)))
def test_same_captions_as_kohya_draw_for_draw(settings):
    kohya = SimpleNamespace(**{**KOHYA_DEFAULTS, **settings})
    ours = CaptionProcessor.from_subset(Subset(image_dir=Path("x"), **settings))
    for caption, epoch, step in itertools.product(CAPTIONS, (1, 2), (0, 3, 6, 12)):
        for seed in range(8):
            theirs_rng, ours_rng = random.Random(seed), random.Random(seed)
            expected = kohya_process_caption(kohya, caption, theirs_rng, epoch, step, max_train_steps=12)
            got = ours(caption, ours_rng, epoch=epoch, step=step, max_train_steps=12)
            assert got == expected, (caption, epoch, step, seed)
            assert ours_rng.getstate() == theirs_rng.getstate()  # the same number of draws


def test_prefix_is_shuffled_with_the_caption_unless_fixed_by_the_separator():
    processor = CaptionProcessor(
        shuffle=True, keep_tokens_separator="|||", prefix="1girl, miku |||", suffix=", screencap ||| best"
    )
    for seed in range(20):
        tags = processor("a, b, c", random.Random(seed)).split(", ")
        assert tags[:2] == ["1girl", "miku"] and tags[-1] == "best"
        assert sorted(tags[2:-1]) == ["a", "b", "c", "screencap"]


def test_wildcards_choose_per_step_and_braces_escape():
    processor = CaptionProcessor(wildcard=True)
    rng = random.Random(0)
    seen = {processor("1girl, {simple|white} background, {{retro}}", rng) for _ in range(50)}
    assert seen == {"1girl, simple background, {retro}", "1girl, white background, {retro}"}
    assert CaptionProcessor()("a {x|y}\nb", rng) == "a {x|y}"  # no wildcard: first line, braces kept


def test_secondary_separator_keeps_a_group_together():
    processor = CaptionProcessor(shuffle=True, tag_dropout_rate=0.5, secondary_separator=";;;")
    for seed in range(30):
        caption = processor("a, sky;;;cloud;;;day, b", random.Random(seed))
        assert ";;;" not in caption
        assert "sky,cloud,day" in caption or "sky" not in caption


def test_token_warmup_grows_the_caption_then_stops():
    processor = CaptionProcessor(keep_tokens=1, warmup_min=1, warmup_step=4)
    caption = "sks, a, b, c, d, e, f, g, h"
    lengths = [len(processor(caption, random.Random(0), step=s).split(", ")) for s in range(6)]
    assert len(processor(caption, random.Random(0)).split(", ")) == 9  # step unknown: no warm-up
    assert lengths == [2, 3, 5, 7, 9, 9]  # keep_tokens stay; floor(step * (8 - 1) / 4) + 1 flexible tags


def test_fixed_caption_has_no_random_parts():
    processor = CaptionProcessor(shuffle=True, prefix="p,", wildcard=True, secondary_separator=";;;")
    assert processor.fixed("{a|b}, x;;;y\nsecond line") == "p, a, x,y"


def test_read_caption_keeps_every_line_with_wildcards(tmp_path):
    (tmp_path / "a.txt").write_text("first, x\n\n  second, y  \nthird\n", encoding="utf-8")
    assert read_caption(tmp_path / "a.png", Subset(image_dir=tmp_path, caption_extension=".txt")) == "first, x"
    wild = Subset(image_dir=tmp_path, caption_extension=".txt", enable_wildcard=True)
    assert read_caption(tmp_path / "a.png", wild) == "first, x\nsecond, y\nthird"


@pytest.mark.parametrize(
    ("settings", "augmenting"),
    [({"token_warmup_step": 10}, True), ({"enable_wildcard": True}, True), ({"caption_prefix": "x"}, False)],
)
def test_is_augmenting_counts_warmup_and_wildcards(settings, augmenting):
    assert CaptionProcessor.from_subset(Subset(image_dir=Path("x"), **settings)).is_augmenting is augmenting
