"""A1111 prompt weighting and prompts past 77 tokens, as kohya's sample images read them.

Syntax: ``(words)`` x1.1, ``[words]`` /1.1, ``(words:1.3)`` x1.3; nesting multiplies;
``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal brackets. A prompt's tokens are cut into
75-token windows; each window is encoded alone as BOS + 75 tokens + EOS (+ padding)
and the windows' states are joined, so nothing past the 77th token is dropped.
Each token's hidden state is multiplied by its weight, then the window is rescaled
to its unweighted mean (A1111's default "Original" emphasis; kohya's SD sampler
rescales the same way, over the whole prompt). SDXL's two encoders are weighted
and rescaled each on its own; its pooled embedding comes from the first window.

No PyPI library reproduces these semantics (see the README), so the parser is
kohya's ``parse_prompt_attention`` (library/lpw_stable_diffusion.py, Apache-2.0,
itself from diffusers' community lpw pipeline and A1111's prompt_parser).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parsing a prompt file needs no torch; encoding does (imported there)
    import torch

WINDOW = 75  # tokens per window, between its BOS and EOS

_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:
""",
    re.X,
)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """``text`` as (fragment, weight) runs; unbalanced brackets close at the end, as in A1111."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # the pattern admits "1.2.3"; A1111 and kohya fail on it mid-render
                raise ValueError(f"':{weight})' is not a weight; write (words:1.2)") from None
            multiply(round_open.pop(), factor)
        elif piece == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        else:
            res.append([piece, 1.0])
    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)
    merged: list[list] = []
    for piece, weight in res or [["", 1.0]]:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += piece  # equal weights tokenize as one run, so plain text tokenizes as a whole
        else:
            merged.append([piece, weight])
    return [(piece, weight) for piece, weight in merged]


def weighted_tokens(tokenizer, text: str) -> tuple[list[int], list[float]]:
    """Token ids of ``text`` (no BOS/EOS) and each token's weight."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_attention(text):
        piece_ids = tokenizer(piece, add_special_tokens=False, verbose=False).input_ids
        ids += piece_ids
        weights += [weight] * len(piece_ids)
    return ids, weights


def count_windows(tokenizers, text: str) -> int:
    """How many 75-token windows ``text`` needs (at least one), the most any of ``tokenizers`` needs."""
    longest = max(len(weighted_tokens(tokenizer, text)[0]) for tokenizer in tokenizers)
    return max(1, -(-longest // WINDOW))


def _windows(tokenizer, text: str, windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    """(windows, 77) token ids and weights; windows past the prompt's own encode the empty prompt."""
    ids, weights = weighted_tokens(tokenizer, text)
    rows, row_weights = [], []
    for index in range(windows):
        part = ids[index * WINDOW : (index + 1) * WINDOW]
        pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        padding = [pad] * (WINDOW - len(part))
        rows.append([tokenizer.bos_token_id, *part, tokenizer.eos_token_id, *padding])
        part_weights = weights[index * WINDOW : (index + 1) * WINDOW]
        row_weights.append([1.0, *part_weights, 1.0] + [1.0] * len(padding))
    return torch.tensor(rows), torch.tensor(row_weights)


def encode_weighted(
    tokenizer, text_encoder, text: str, device, windows: int, hidden_layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77 x windows, width) weighted states of ``text``, and the first window's pooled output if any.

    ``hidden_layer`` None: the last layer's output (SD 1.x/2.x); -2: the penultimate hidden
    state, without the final norm (both SDXL encoders), as diffusers' pipelines take them.
    """
    import torch

    ids, weights = _windows(tokenizer, text, windows)
    states, pooled = [], None
    for row in ids.to(device).split(1):  # one window per call: the first is bit-identical to a plain encode
        output = text_encoder(row, output_hidden_states=hidden_layer is not None)
        states.append(output[0] if hidden_layer is None else output.hidden_states[hidden_layer])
        if pooled is None and output[0].dim() == 2:  # CLIPTextModelWithProjection's text_embeds
            pooled = output[0]
    states = torch.cat(states)
    if not torch.all(weights == 1):
        original = states.float()
        weighted = original * weights.to(original.device)[..., None]
        # Per window: the mean before weighting over the mean after, as A1111 rescales each chunk.
        scale = original.mean(dim=(1, 2), keepdim=True) / weighted.mean(dim=(1, 2), keepdim=True)
        states = (weighted * scale).to(states.dtype)
    return states.reshape(1, -1, states.shape[-1]), pooled
