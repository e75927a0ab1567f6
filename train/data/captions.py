"""Caption files and kohya's caption augmentation (shuffle, keep_tokens, dropout).

``CaptionProcessor`` is pure: the same caption and the same ``random.Random`` state give
the same result, so a seeded run sees the same captions again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.data.sources import Subset


class CaptionProblem(ValueError):
    """An image has no usable caption; the message says why."""


def read_caption(image_path: Path, subset: Subset) -> str:
    """First line of ``<image stem><caption_extension>``, else the subset's class tokens.

    kohya reads only the first line of a caption file; an empty file is an error there too.
    """
    caption_path = image_path.with_suffix(subset.caption_extension)
    if not caption_path.is_file():
        if subset.class_tokens:
            return subset.class_tokens
        raise CaptionProblem(f"no caption file {caption_path.name} and the subset has no class_tokens to use instead")
    try:
        lines = caption_path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise CaptionProblem(f"caption file {caption_path} is not UTF-8 text") from None
    except OSError as error:
        raise CaptionProblem(f"cannot read caption file {caption_path}: {error.strerror or error}") from None
    caption = lines[0].strip() if lines else ""
    if caption:
        return caption
    if subset.class_tokens:
        return subset.class_tokens
    raise CaptionProblem(f"caption file {caption_path} is empty and the subset has no class_tokens")


@dataclass(frozen=True)
class CaptionProcessor:
    """kohya's ``process_caption`` for one subset's settings."""

    shuffle: bool = False
    keep_tokens: int = 0
    separator: str = ","
    keep_tokens_separator: str = ""
    dropout_rate: float = 0.0
    dropout_every_n_epochs: int = 0
    tag_dropout_rate: float = 0.0

    @classmethod
    def from_subset(cls, subset: Subset) -> CaptionProcessor:
        return cls(
            shuffle=subset.shuffle_caption,
            keep_tokens=subset.keep_tokens,
            separator=subset.caption_separator,
            keep_tokens_separator=getattr(subset, "keep_tokens_separator", ""),
            dropout_rate=subset.caption_dropout_rate,
            dropout_every_n_epochs=getattr(subset, "caption_dropout_every_n_epochs", 0),
            tag_dropout_rate=subset.caption_tag_dropout_rate,
        )

    @property
    def is_augmenting(self) -> bool:
        """True when captions change from step to step (so text-encoder outputs cannot be cached)."""
        return self.shuffle or self.dropout_rate > 0 or self.tag_dropout_rate > 0 or self.dropout_every_n_epochs > 0

    def __call__(self, caption: str, rng: random.Random, epoch: int | None = None) -> str:
        """The caption for one training step; ``epoch`` (1-based) drives dropout_every_n_epochs."""
        if self._drops_whole_caption(rng, epoch):
            return ""
        if not (self.shuffle or self.tag_dropout_rate > 0):
            return caption  # kohya leaves the text untouched unless it shuffles or drops tags
        fixed, flexible, fixed_suffix = self._split(caption)
        if self.shuffle:
            rng.shuffle(flexible)
        if self.tag_dropout_rate > 0:
            flexible = [tag for tag in flexible if rng.random() >= self.tag_dropout_rate]
        return ", ".join(fixed + flexible + fixed_suffix)

    def _drops_whole_caption(self, rng: random.Random, epoch: int | None) -> bool:
        # Draw only when a rate is set, as kohya does, so the rng stream matches its order.
        if self.dropout_rate > 0 and rng.random() < self.dropout_rate:
            return True
        every = self.dropout_every_n_epochs
        return every > 0 and epoch is not None and epoch % every == 0

    def _split(self, caption: str) -> tuple[list[str], list[str], list[str]]:
        """(kept in front, shuffled/dropped, kept at the end) tags."""
        marker = self.keep_tokens_separator
        if marker and marker in caption:
            fixed_part, flexible_part = caption.split(marker, 1)
            suffix_part = ""
            if marker in flexible_part:
                flexible_part, suffix_part = flexible_part.split(marker, 1)
            return self._tags(fixed_part), self._tags(flexible_part), self._tags(suffix_part)
        tags = self._tags(caption)
        return tags[: self.keep_tokens], tags[self.keep_tokens :], []

    def _tags(self, text: str) -> list[str]:
        return [tag.strip() for tag in text.split(self.separator) if tag.strip()]
