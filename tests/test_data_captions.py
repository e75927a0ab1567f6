"""Caption files and kohya's caption augmentation, with seeded rngs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from train.data import CaptionProcessor, Subset, read_caption
from train.data.captions import CaptionProblem

CAPTION = "sks, girl, red hair, smile, outdoors, hat"


def test_plain_processor_returns_caption_untouched():
    processor = CaptionProcessor.from_subset(Subset(image_dir=Path("x"), keep_tokens=2))
    assert not processor.is_augmenting
    assert processor("a,b ,  c", random.Random(0)) == "a,b ,  c"


@pytest.mark.parametrize(
    "settings",
    [
        {"shuffle_caption": True},
        {"caption_dropout_rate": 0.1},
        {"caption_tag_dropout_rate": 0.1},
        {"caption_dropout_every_n_epochs": 3},
    ],
)
def test_is_augmenting_for_each_augmentation(settings):
    assert CaptionProcessor.from_subset(Subset(image_dir=Path("x"), **settings)).is_augmenting


def test_shuffle_keeps_the_first_tokens_in_place():
    processor = CaptionProcessor(shuffle=True, keep_tokens=2)
    rng = random.Random(0)
    orders = Counter()
    for _ in range(300):
        tags = processor(CAPTION, rng).split(", ")
        assert tags[:2] == ["sks", "girl"]
        assert sorted(tags) == sorted(t.strip() for t in CAPTION.split(","))
        orders[tuple(tags)] += 1
    assert len(orders) > 20  # 4! = 24 orders of the rest; nearly all seen in 300 draws


def test_same_seed_same_captions():
    processor = CaptionProcessor(shuffle=True, tag_dropout_rate=0.3, dropout_rate=0.1)
    first = [processor(CAPTION, random.Random(7)) for _ in range(3)]
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert [processor(CAPTION, rng_a) for _ in range(50)] == [processor(CAPTION, rng_b) for _ in range(50)]
    assert len(set(first)) == 1


def test_caption_dropout_rate_statistics():
    processor = CaptionProcessor(dropout_rate=0.3)
    rng = random.Random(1)
    dropped = sum(processor(CAPTION, rng) == "" for _ in range(4000))
    assert abs(dropped / 4000 - 0.3) < 0.03


def test_tag_dropout_statistics_and_kept_tokens_survive():
    processor = CaptionProcessor(keep_tokens=1, tag_dropout_rate=0.25)
    rng = random.Random(2)
    kept_flexible = 0
    for _ in range(2000):
        tags = processor(CAPTION, rng).split(", ")
        assert tags[0] == "sks"
        kept_flexible += len(tags) - 1
    assert abs(kept_flexible / (2000 * 5) - 0.75) < 0.03


def test_keep_tokens_separator_fixes_prefix_and_suffix():
    processor = CaptionProcessor(shuffle=True, keep_tokens=3, keep_tokens_separator="|||")
    rng = random.Random(3)
    for _ in range(50):
        tags = processor("sks, girl ||| a, b, c, d ||| masterpiece", rng).split(", ")
        assert tags[:2] == ["sks", "girl"] and tags[-1] == "masterpiece"
        assert sorted(tags[2:-1]) == ["a", "b", "c", "d"]


def test_dropout_every_n_epochs():
    processor = CaptionProcessor(dropout_every_n_epochs=2)
    rng = random.Random(0)
    assert [processor("a", rng, epoch=e) for e in (1, 2, 3, 4)] == ["a", "", "a", ""]


def test_read_caption_first_line_and_class_token_fallback(tmp_path):
    (tmp_path / "a.txt").write_text("\ufefffirst line  \nsecond line\n", encoding="utf-8")
    subset = Subset(image_dir=tmp_path)
    assert read_caption(tmp_path / "a.png", subset) == "first line"
    with_tokens = Subset(image_dir=tmp_path, class_tokens="sks dog")
    assert read_caption(tmp_path / "b.png", with_tokens) == "sks dog"
    (tmp_path / "c.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(CaptionProblem, match="c.txt is empty"):
        read_caption(tmp_path / "c.png", subset)


def test_caption_extension_is_honoured(tmp_path):
    (tmp_path / "a.caption").write_text("from caption file", encoding="utf-8")
    (tmp_path / "a.txt").write_text("from txt file", encoding="utf-8")
    subset = Subset(image_dir=tmp_path, caption_extension=".caption")
    assert read_caption(tmp_path / "a.png", subset) == "from caption file"
