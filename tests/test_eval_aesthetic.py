"""The LAION aesthetic head: file formats, key/shape checks, safe loading, eval-mode scoring."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from evaluate.aesthetic import AestheticHead, aesthetic_scores, load_aesthetic_head
from train.errors import ConfigError

# The keys of sac+logos+ava1-l14-linearMSE.pth (Linear layers at Sequential indices 0, 2, 4, 6, 7).
LAION_KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def laion_state(input_dim: int = 768, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {0: (1024, input_dim), 2: (128, 1024), 4: (64, 128), 6: (16, 64), 7: (1, 16)}
    state = {}
    for index, shape in shapes.items():
        state[f"layers.{index}.weight"] = torch.randn(shape, generator=generator) * 0.05
        state[f"layers.{index}.bias"] = torch.randn(shape[0], generator=generator) * 0.05
    return state


class _RunsOnUnpickle:
    """A pickle payload that would create a folder if unpickling executed it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_key_layout_matches_laion_file():
    assert sorted(AestheticHead(768).state_dict()) == sorted(LAION_KEYS)


def test_pth_and_safetensors_load_identically(tmp_path):
    state = laion_state()
    torch.save(state, tmp_path / "head.pth")
    torch.save({"state_dict": state}, tmp_path / "nested.pt")
    save_file(state, str(tmp_path / "head.safetensors"))
    heads = [
        load_aesthetic_head(tmp_path / name, input_dim=768) for name in ("head.pth", "nested.pt", "head.safetensors")
    ]
    embeds = torch.randn(5, 768, generator=torch.Generator().manual_seed(1))
    scores = [aesthetic_scores(head, embeds) for head in heads]
    assert scores[0].shape == (5,)
    assert torch.equal(scores[0], scores[1]) and torch.equal(scores[0], scores[2])
    for key, value in heads[0].state_dict().items():
        assert torch.equal(value, heads[2].state_dict()[key])
    # input_dim is optional: the file says 768.
    assert load_aesthetic_head(tmp_path / "head.pth").input_dim == 768


def test_scores_deterministic_and_normalised(tmp_path):
    save_file(laion_state(), str(tmp_path / "head.safetensors"))
    head = load_aesthetic_head(tmp_path / "head.safetensors")
    head.train()  # dropout must still be off while scoring
    embeds = torch.randn(8, 768, generator=torch.Generator().manual_seed(2))
    first = aesthetic_scores(head, embeds)
    assert torch.equal(first, aesthetic_scores(head, embeds))
    assert head.training  # the caller's mode is restored
    # LAION feeds the L2-normalised embedding, so the scale of the input does not matter.
    assert torch.allclose(first, aesthetic_scores(head, embeds * 7.0), atol=1e-6)
    expected = head.eval().layers(embeds / embeds.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(first, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s.update({"layers.2.weight": torch.zeros(128, 1000)}), "layers.2.weight"),
        (lambda s: s.pop("layers.7.bias"), "layers.7.bias"),
        (lambda s: s.update({"layers.1.weight": torch.zeros(3)}), "layers.1.weight"),
    ],
    ids=["wrong-shape", "missing-key", "unexpected-key"],
)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_bad_state_dicts_are_config_errors(tmp_path, edit, needle, suffix):
    state = laion_state()
    edit(state)
    path = tmp_path / f"bad{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    with pytest.raises(ConfigError) as err:
        load_aesthetic_head(path)
    message = str(err.value)
    assert "evaluate.aesthetic_path" in message and str(path) in message and needle in message


def test_input_dim_mismatch(tmp_path):
    save_file(laion_state(768), str(tmp_path / "head.safetensors"))
    with pytest.raises(ConfigError, match=r"evaluate.aesthetic_path.*768.*512"):
        load_aesthetic_head(tmp_path / "head.safetensors", input_dim=512)


def test_arbitrary_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "was-executed"
    path = tmp_path / "evil.pth"
    torch.save({**laion_state(), "payload": _RunsOnUnpickle(str(marker))}, path)
    with pytest.raises(ConfigError, match="evaluate.aesthetic_path") as err:
        load_aesthetic_head(path)
    assert "refused them without running them" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_aesthetic_head(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="evaluate.aesthetic_path.*not a readable PyTorch file"):
        load_aesthetic_head(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError, match="evaluate.aesthetic_path"):
        load_aesthetic_head(tmp_path / "junk.safetensors")
    (tmp_path / "head.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown weight format"):
        load_aesthetic_head(tmp_path / "head.onnx")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="not a state dict"):
        load_aesthetic_head(tmp_path / "list.pth")
