"""The world's CLIP BPE tokenizer: CLIP's byte-level alphabet, merges learned from the world's words.

It is a plain ``CLIPTokenizer`` (vocab.json + merges.txt), saved and loaded as
a real CLIP tokenizer is. The merges are learned by BPE (most frequent pair
first) from the words the world's captions use, a few common English ones and
the world's rare tokens (``sks`` among them, as in CLIP's vocabulary), so each
of those is one token; any other word falls apart into pieces, as a word
CLIP never saw does.
"""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from train.data import world

MAX_TOKENS = 77
# Words of the captions and prompts people write about such images, beyond the world's labels.
COMMON_WORDS = (
    "a an the on in of with and or shape shapes picture photo image drawing of background small large big "
    "bright dark blurry noisy low quality high detailed simple flat colour color gray left right top bottom centre "
    "smeared oversaturated tinted pixelated speckled"
).split()
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def corpus() -> collections.Counter:
    """Word frequencies the merges are learned from: world captions weigh by how often the world says them."""
    counts: collections.Counter = collections.Counter()
    for scene in world.scenes(seed=0, count=4000, shapes=world.SHAPES):
        counts.update(world.caption(scene).split())
    counts.update(COMMON_WORDS)
    counts.update(world.RARE_TOKENS)  # in the vocabulary, never in a caption
    return counts


def learn_merges(counts: collections.Counter) -> list[tuple[str, str]]:
    """BPE merges (Sennrich et al.) until every corpus word is one token; ties broken by the pair itself."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in counts.items()}
    merges = []
    while True:
        pairs: collections.Counter = collections.Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new_words = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt in CLIP's layout: bytes, bytes</w>, merged tokens, specials."""
    merges = learn_merges(corpus())
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(pair) for pair in merges] + list(SPECIALS)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_world_tokenizer() -> CLIPTokenizer:
    """The tokenizer in memory (written to a temporary folder and read back as CLIP's is)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_TOKENS, local_files_only=True)
