"""CLIP-T/CLIP-I math and the CLIP wrapper, checked against torchmetrics on the tiny demo CLIP."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from evaluate.clip_scores import CLIPEmbedder, clip_i_scores, clip_t_scores, l2_normalize
from evaluate.demo_models import build_demo_clip
from evaluate.scoring import Scorer
from train.errors import ModelLoadError

# Many candidates: on a random CLIP most image-prompt cosines are near 0 or negative.
PROMPTS = [
    "a red cat",
    "the dog in the house",
    "an orange on a table",
    "a photo of the sea",
    "a blue sky",
    "in the garden",
    "fire",
    "three birds",
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return build_demo_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def embedder(demo_dir):
    return CLIPEmbedder.from_path(demo_dir)


class _FeatureShim(torch.nn.Module):
    """torchmetrics 1.9 expects get_*_features to return tensors; transformers 5 returns ModelOutputs."""

    def __init__(self, model):
        super().__init__()
        self.clip = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        out = self.clip.get_image_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.clip.get_text_features(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _candidate_images() -> list[Image.Image]:
    # Solid colours, gradients and noise; non-square sizes so resize and centre crop both run.
    images = [Image.new("RGB", (56, 40), c) for c in itertools.product((0, 128, 255), repeat=3)]
    for channel in range(3):
        pixels = np.zeros((48, 40, 3), dtype=np.uint8)
        pixels[..., channel] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
        images.append(Image.fromarray(pixels))
    for seed in range(3):
        images.append(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)))
    return images


def _as_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def test_pure_functions():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    assert torch.allclose(l2_normalize(a).norm(dim=-1), torch.ones(2))
    assert torch.equal(l2_normalize(torch.zeros(1, 2)), torch.zeros(1, 2))
    assert torch.allclose(clip_t_scores(a, b), torch.tensor([1.0, 0.0]))
    # Mean cosine to all references: [1, 0] vs {[1, 0], [0, 1]} -> (1 + 0) / 2.
    refs = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    assert torch.allclose(clip_i_scores(torch.tensor([[1.0, 0.0]]), refs), torch.tensor([0.5]))
    with pytest.raises(ValueError):
        clip_t_scores(a, b[:1])


def test_clip_t_matches_torchmetrics(embedder):
    """The oracle: our mean CLIP-T equals torchmetrics' CLIPScore / 100 on the same model and images."""
    from torchmetrics.functional.multimodal import clip_score
    from torchmetrics.multimodal.clip_score import CLIPScore

    images = _candidate_images()
    cosines = clip_t_scores(
        embedder.embed_images(images).repeat_interleave(len(PROMPTS), 0),
        embedder.embed_texts(PROMPTS).repeat(len(images), 1),
    ).reshape(len(images), len(PROMPTS))
    # torchmetrics clamps the mean at 0, so compare on pairs whose cosine is clearly positive.
    pairs = [(i, int(cosines[i].argmax())) for i in range(len(images)) if cosines[i].max() > 0.03]
    assert len(pairs) >= 5
    chosen = [images[i] for i, _ in pairs]
    prompts = [PROMPTS[j] for _, j in pairs]

    _, aggregate = Scorer(embedder).score(chosen, prompts)
    assert aggregate["clip_t"] > 0.03

    def model_and_processor():
        return _FeatureShim(embedder.model), embedder.processor

    metric = CLIPScore(model_name_or_path=model_and_processor)
    metric.update([_as_uint8_chw(im) for im in chosen], prompts)
    assert abs(metric.compute().item() / 100 - aggregate["clip_t"]) < 1e-4

    per_image, _ = Scorer(embedder).score(chosen, prompts)
    for image, prompt, scores in zip(chosen, prompts, per_image, strict=True):
        reference = clip_score(_as_uint8_chw(image), prompt, model_name_or_path=model_and_processor).item() / 100
        assert abs(reference - scores.clip_t) < 1e-4


def test_long_prompts_keep_their_end_token(embedder):
    # Over-long prompts are cut to 77 tokens with the end-of-text token kept, so the start still counts.
    tail = " the dog" * 100
    embeds = embedder.embed_texts(["a cat" + tail, "an orange" + tail])
    assert embeds.shape == (2, embedder.embed_dim)
    assert not torch.allclose(embeds[0], embeds[1])


def test_embed_images_shapes_and_rgba(embedder):
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    embeds = embedder.embed_images([rgba, white])
    assert embeds.dtype == torch.float32 and embeds.shape == (2, embedder.embed_dim)
    # Transparent pixels are white, as in training.
    assert torch.allclose(embeds[0], embeds[1])
    assert embedder.embed_images([]).shape == (0, embedder.embed_dim)


def test_identity_stable_across_loads_and_sensitive_to_weights(demo_dir, embedder, tmp_path):
    assert CLIPEmbedder.from_path(demo_dir).identity == embedder.identity
    changed = CLIPEmbedder.from_path(demo_dir)
    with torch.no_grad():
        changed.model.visual_projection.weight[0, 0] += 1.0
    assert changed.identity != embedder.identity


def test_from_path_errors(demo_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="evaluate.clip_path") as err:
        CLIPEmbedder.from_path(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)

    no_weights = tmp_path / "no-weights"
    shutil.copytree(demo_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="evaluate.clip_path") as err:
        CLIPEmbedder.from_path(no_weights)
    assert "no-weights" in str(err.value) and "model.safetensors" in str(err.value)

    # A weights file lacking a tensor would otherwise load with random values.
    truncated = tmp_path / "truncated"
    shutil.copytree(demo_dir, truncated)
    state = load_file(truncated / "model.safetensors")
    state.pop("visual_projection.weight")
    save_file(state, str(truncated / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="visual_projection.weight"):
        CLIPEmbedder.from_path(truncated)

    a_file = tmp_path / "clip.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a folder"):
        CLIPEmbedder.from_path(a_file)
