"""LAION improved aesthetic predictor v2: an MLP over the L2-normalised CLIP image embedding.

The layer layout copies ``sac+logos+ava1-l14-linearMSE.pth`` exactly (no activations,
dropout between the linears), so that file's state dict loads unchanged. It is read
with ``weights_only=True``: a .pth holding anything but tensors is refused, never run.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from evaluate.clip_scores import l2_normalize
from train.errors import ConfigError

AESTHETIC_PATH_KEY = "evaluate.aesthetic_path"
LAION_INPUT_DIM = 768  # OpenAI CLIP ViT-L/14 projection
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# (index in `layers`, out_features) of each Linear; the in_features chain from the previous.
_LINEARS = ((0, 1024), (2, 128), (4, 64), (6, 16), (7, 1))


class AestheticHead(nn.Module):
    def __init__(self, input_dim: int = LAION_INPUT_DIM):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def expected_shapes(input_dim: int) -> dict[str, tuple[int, ...]]:
    shapes, width = {}, input_dim
    for index, out in _LINEARS:
        shapes[f"layers.{index}.weight"] = (out, width)
        shapes[f"layers.{index}.bias"] = (out,)
        width = out
    return shapes


def _read_state_dict(file: Path) -> dict:
    where = f"{AESTHETIC_PATH_KEY}: {file}"
    if file.suffix == ".safetensors":
        try:
            return load_safetensors(file)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"{where} is not a readable safetensors file ({exc})") from None
    if file.suffix not in PICKLE_SUFFIXES:
        raise ConfigError(f"{where}: unknown weight format; give a .pth/.pt state dict or a .safetensors file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Keep torch's reason (e.g. "unsupported GLOBAL posix.system"), not its advice to load unsafely.
        reason = " ".join(
            line.strip()
            for line in str(exc).splitlines()[1:]
            if line.strip() and not line.startswith(("Check the documentation", "Please file an issue"))
        )
        if "GLOBAL" not in reason:
            raise ConfigError(f"{where} is not a readable PyTorch file ({reason or exc})") from None
        raise ConfigError(
            f"{where} holds pickled Python objects, not only tensors; loading refused them without running them "
            f"({reason}). Save a plain state dict (torch.save(model.state_dict())) or a .safetensors file."
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ConfigError(f"{where} is not a readable PyTorch file ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{where} is not a state dict of tensors (got {type(state).__name__})")
    return state


def load_aesthetic_head(path: str | os.PathLike, input_dim: int | None = None) -> AestheticHead:
    """Load and check a head; ``input_dim`` is the CLIP embedding size it must accept."""
    file = Path(path).expanduser()
    where = f"{AESTHETIC_PATH_KEY}: {file}"
    if not file.is_file():
        raise ConfigError(f"{where} does not exist" if not file.exists() else f"{where} is not a file")
    state = _read_state_dict(file)
    first = state.get("layers.0.weight")
    head_dim = int(first.shape[1]) if first is not None and first.ndim == 2 else (input_dim or LAION_INPUT_DIM)
    expected = expected_shapes(head_dim)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}; expected the LAION layout {sorted(expected)}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ConfigError(f"{where} has unexpected keys {', '.join(unexpected)}; expected only {sorted(expected)}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ConfigError(f"{where}: {key} has shape {tuple(state[key].shape)}, expected {shape}")
    if input_dim is not None and head_dim != input_dim:
        raise ConfigError(
            f"{where} takes {head_dim}-dim CLIP embeddings but the CLIP model gives {input_dim}; "
            "use the head trained for this CLIP model (LAION's v2 head is for ViT-L/14, 768)"
        )
    head = AestheticHead(head_dim)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()


@torch.no_grad()
def aesthetic_scores(head: AestheticHead, image_embeds: Tensor) -> Tensor:
    """One score per image; dropout off, embeddings L2-normalised first as LAION trained it."""
    was_training = head.training
    head.eval()
    try:
        return head(l2_normalize(image_embeds.float())).squeeze(-1)
    finally:
        head.train(was_training)
