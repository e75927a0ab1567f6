"""Caption files and kohya's caption processing, step by step in the order of its ``process_caption``.

Order: prefix/suffix, whole-caption dropout, wildcards (a line of a multi-line caption,
then ``{a|b}`` choices), split at keep_tokens_separator or keep_tokens, token warm-up,
shuffle, tag dropout, secondary separator. ``CaptionProcessor`` is pure: the same caption,
step and ``random.Random`` state give the same result, with the same draws as kohya's.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from train.errors import ConfigError

if TYPE_CHECKING:
    from train.data.records import ImageRecord
    from train.data.sources import Subset

log = logging.getLogger(__name__)
# Subset options that change the caption from step to step.
PER_STEP_CAPTION_KEYS = (
    "shuffle_caption",
    "caption_tag_dropout_rate",
    "caption_dropout_rate",
    "caption_dropout_every_n_epochs",
    "token_warmup_step",
)


class CaptionProblem(ValueError):
    """An image has no usable caption; the message says why."""


def read_caption(image_path: Path, subset: Subset) -> str:
    """``<image stem><caption_extension>``, else the subset's class tokens.

    kohya reads the first line, or with enable_wildcard every non-empty line (one is chosen
    per step); an empty file is an error there too.
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
    if subset.enable_wildcard:
        caption = "\n".join(line.strip() for line in lines if line.strip())
    else:
        caption = lines[0].strip() if lines else ""
    if caption:
        return caption
    if subset.class_tokens:
        return subset.class_tokens
    raise CaptionProblem(f"caption file {caption_path} is empty and the subset has no class_tokens")


def add_prefix_suffix(caption: str, prefix: str, suffix: str) -> str:
    """kohya joins them with a space, before anything else (so they are shuffled too)."""
    if prefix:
        caption = prefix + " " + caption
    if suffix:
        caption = caption + " " + suffix
    return caption


# kohya's wildcard captions (enable_wildcard): one line of a multi-line caption, then `{a|b|c}` choices;
# `{{` and `}}` stand for literal braces. Escape, pattern and draws (one choice for the line, then one
# per group, left to right) are kohya's, so a seeded rng picks what kohya's would.
# A group runs to the first "}", as in kohya; nested groups are not supported there either.
GROUP = re.compile(r"\{([^}]+)\}")


def choose_line_and_wildcards(caption: str, rng: random.Random) -> str:
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    return _expand(caption, rng.choice)


def first_choices(caption: str) -> str:
    """Every group replaced by its first option: the deterministic reading of a wildcard caption."""
    return _expand(caption, lambda options: options[0])


def has_choice(caption: str) -> bool:
    """True when a caption would differ between steps: several lines, or a group with options."""
    if "\n" in caption:
        return True
    escaped, _, _ = _escape(caption)
    return any("|" in match.group(1) for match in GROUP.finditer(escaped))


def _expand(caption: str, pick: Callable[[list[str]], str]) -> str:
    escaped, opening, closing = _escape(caption)
    chosen = GROUP.sub(lambda match: pick(match.group(1).split("|")), escaped)
    return chosen.replace(opening, "{").replace(closing, "}")


def _escape(caption: str) -> tuple[str, str, str]:
    """Hide ``{{``/``}}`` behind markers that do not occur in the caption."""
    opening, closing = "⦅", "⦆"
    while opening in caption or closing in caption:
        opening += "⦅"
        closing += "⦆"
    return caption.replace("{{", opening).replace("}}", closing), opening, closing


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
    prefix: str = ""
    suffix: str = ""
    secondary_separator: str = ""
    wildcard: bool = False
    warmup_min: int = 1
    warmup_step: float = 0  # below 1: a fraction of max_train_steps

    @classmethod
    def from_subset(cls, subset: Subset) -> CaptionProcessor:
        return cls(
            shuffle=subset.shuffle_caption,
            keep_tokens=subset.keep_tokens,
            separator=subset.caption_separator,
            keep_tokens_separator=subset.keep_tokens_separator,
            dropout_rate=subset.caption_dropout_rate,
            dropout_every_n_epochs=subset.caption_dropout_every_n_epochs,
            tag_dropout_rate=subset.caption_tag_dropout_rate,
            prefix=subset.caption_prefix,
            suffix=subset.caption_suffix,
            secondary_separator=subset.secondary_separator,
            wildcard=subset.enable_wildcard,
            warmup_min=subset.token_warmup_min,
            warmup_step=subset.token_warmup_step,
        )

    @property
    def is_augmenting(self) -> bool:
        """True when captions may change from step to step (so text-encoder outputs cannot be cached)."""
        return (
            self.shuffle
            or self.dropout_rate > 0
            or self.tag_dropout_rate > 0
            or self.dropout_every_n_epochs > 0
            or self.warmup_step > 0
            or self.wildcard
        )

    def __call__(
        self,
        caption: str,
        rng: random.Random,
        epoch: int | None = None,
        step: int | None = None,
        max_train_steps: int = 0,
    ) -> str:
        """The caption for one training step.

        ``epoch`` (1-based) drives dropout_every_n_epochs; ``step`` (optimizer steps done) and
        ``max_train_steps`` drive the token warm-up, which is skipped when ``step`` is None.
        """
        caption = add_prefix_suffix(caption, self.prefix, self.suffix)
        if self._drops_whole_caption(rng, epoch):
            return ""
        caption = choose_line_and_wildcards(caption, rng) if self.wildcard else caption.split("\n")[0]
        # kohya splits and rejoins only when one of these is on; otherwise the text stays as written.
        if self.shuffle or self.warmup_step > 0 or self.tag_dropout_rate > 0:
            fixed, flexible, fixed_suffix = self._split(caption)
            flexible = flexible[: self._warmup_length(len(flexible), step, max_train_steps)]
            if self.shuffle:
                rng.shuffle(flexible)
            if self.tag_dropout_rate > 0:
                flexible = [tag for tag in flexible if rng.random() >= self.tag_dropout_rate]
            caption = ", ".join(fixed + flexible + fixed_suffix)
        return self._join_secondary(caption)

    def fixed(self, caption: str) -> str:
        """The caption without its random parts: first line, first wildcard choice, no shuffle or dropout.

        For cached text-encoder outputs and the validation loss, which need one caption per image.
        """
        caption = add_prefix_suffix(caption, self.prefix, self.suffix).split("\n")[0]
        return self._join_secondary(first_choices(caption) if self.wildcard else caption)

    def _drops_whole_caption(self, rng: random.Random, epoch: int | None) -> bool:
        # Draw only when a rate is set, as kohya does, so the rng stream matches its order.
        if self.dropout_rate > 0 and rng.random() < self.dropout_rate:
            return True
        every = self.dropout_every_n_epochs
        return every > 0 and epoch is not None and epoch % every == 0

    def _warmup_length(self, count: int, step: int | None, max_train_steps: int) -> int:
        """kohya's token warm-up: warmup_min flexible tags at step 0, growing linearly to all at warmup_step."""
        if step is None:
            return count
        warmup = self.warmup_step
        if warmup < 1:
            warmup = math.floor(warmup * max_train_steps)
        if warmup and step < warmup:
            return math.floor(step * ((count - self.warmup_min) / warmup)) + self.warmup_min
        return count

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
        # Unlike kohya, empty tags (from ", ," or a trailing comma) are dropped, not kept as "".
        return [tag.strip() for tag in text.split(self.separator) if tag.strip()]

    def _join_secondary(self, caption: str) -> str:
        """kohya: a group joined by secondary_separator was one tag; now it reads with the caption separator."""
        if self.secondary_separator:
            return caption.replace(self.secondary_separator, self.separator)
        return caption


def use_text_cache(records: Iterable[ImageRecord], wanted: bool | None, train_text_encoder: bool) -> bool:
    """Whether to cache text-encoder outputs (``train.cache_text_encoder_outputs``: ``wanted``).

    Cached outputs hold one caption per image: a subset whose captions change per step stops a
    run that asked for the cache (true), and turns the cache off where it was left unset (null).
    """
    if wanted is False or train_text_encoder:
        return False
    problems = text_cache_problems(records, True)
    if problems and wanted:
        raise ConfigError("train.cache_text_encoder_outputs: " + "; ".join(problems))
    if problems:
        log.info("captions change every step, so text-encoder outputs are not cached: %s", "; ".join(problems))
    return not problems


def text_cache_problems(records: Iterable[ImageRecord], cache_text_encoder_outputs: bool) -> list[str]:
    """One line per subset whose captions change per step, which cached text-encoder outputs cannot follow.

    enable_wildcard counts only when a caption has a choice.
    """
    if not cache_text_encoder_outputs:
        return []
    keys_by_subset: dict[Subset, list[str]] = {}
    for record in records:
        subset = record.subset
        keys = keys_by_subset.setdefault(subset, [key for key in PER_STEP_CAPTION_KEYS if getattr(subset, key)])
        if subset.enable_wildcard and "enable_wildcard" not in keys:
            if has_choice(add_prefix_suffix(record.caption, subset.caption_prefix, subset.caption_suffix)):
                keys.append("enable_wildcard")
    problems = []
    for subset, keys in keys_by_subset.items():
        if keys:
            named = ", ".join(keys)
            problems.append(
                f"subset {subset.source}: {named} change{'s' if len(keys) == 1 else ''} the caption every step, "
                "but cached text-encoder outputs are encoded once per caption; set "
                f"train.cache_text_encoder_outputs=false or remove {named} from the subset"
            )
    return problems
