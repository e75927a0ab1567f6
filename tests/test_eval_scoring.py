"""The scorer: one CLIP forward per image, CLIP-I and its cache, build_scorer, the demo folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from evaluate.aesthetic import load_aesthetic_head
from evaluate.clip_scores import CLIPEmbedder
from evaluate.config import EvaluateConfig
from evaluate.demo_models import AESTHETIC_FILE, build_demo_clip
from evaluate.scoring import Scorer, build_scorer, reference_embeddings
from tests.test_eval_aesthetic import laion_state
from train.errors import ConfigError, ModelLoadError


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return build_demo_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture
def embedder(demo_dir):
    return CLIPEmbedder.from_path(demo_dir)


def _image(seed: int, size=(40, 48)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _save_images(folder, count: int, start: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + count):
        paths.append(folder / f"img{seed}.png")
        _image(seed).save(paths[-1])
    return paths


def test_one_clip_image_forward_per_image(demo_dir, embedder, tmp_path):
    references = reference_embeddings(embedder, _save_images(tmp_path / "train", 3), tmp_path / "cache")
    head = load_aesthetic_head(demo_dir / AESTHETIC_FILE, input_dim=embedder.embed_dim)
    scorer = Scorer(embedder, head, references)
    seen = []
    hook = embedder.model.vision_model.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True
    )
    try:
        images = [_image(seed) for seed in range(10, 15)]
        per_image, aggregate = scorer.score(images, ["a cat", "a dog", "a cat", "the sea", "a dog"])
    finally:
        hook.remove()
    assert sum(call["pixel_values"].shape[0] for call in seen) == len(images)
    assert set(aggregate) == {"clip_t", "clip_i", "aesthetic"} == scorer.available_metrics()
    assert all(s.clip_i is not None and s.aesthetic is not None for s in per_image)
    for name in aggregate:
        assert aggregate[name] == pytest.approx(np.mean([getattr(s, name) for s in per_image]), abs=1e-6)


def test_scores_deterministic(demo_dir, embedder):
    head = load_aesthetic_head(demo_dir / AESTHETIC_FILE).train()
    scorer = Scorer(embedder, head)
    images, prompts = [_image(1), _image(2)], ["a cat", "a dog"]
    first, second = scorer.score(images, prompts), scorer.score(images, prompts)
    assert first == second
    assert set(first[1]) == {"clip_t", "aesthetic"} and first[0][0].clip_i is None
    assert scorer.score([], []) == ([], {})
    with pytest.raises(ValueError):
        scorer.score(images, prompts[:1])


def test_clip_i_identity_and_rgba_on_white(embedder, tmp_path):
    paths = _save_images(tmp_path / "train", 1)
    scorer = Scorer(embedder, reference_embeds=reference_embeddings(embedder, paths, tmp_path / "cache"))
    per_image, _ = scorer.score([Image.open(paths[0])], ["a cat"])
    assert per_image[0].clip_i == pytest.approx(1.0, abs=1e-5)

    # A transparent training image is compared as RGB on white, as it was trained.
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (10, 10, 30, 30))
    rgba.save(tmp_path / "rgba.png")
    on_white = Image.new("RGB", (40, 40), (255, 255, 255))
    on_white.paste((255, 0, 0), (10, 10, 30, 30))
    refs = reference_embeddings(embedder, [tmp_path / "rgba.png"], tmp_path / "cache")
    assert torch.allclose(refs[0], embedder.embed_images([on_white])[0], atol=1e-5)


def test_reference_cache(demo_dir, embedder, tmp_path):
    paths = _save_images(tmp_path / "train", 3)
    first = reference_embeddings(embedder, paths, tmp_path / "cache")
    assert embedder.images_embedded == 3 and first.shape == (3, embedder.embed_dim)

    # A second call, even from a fresh load of the same CLIP, embeds nothing.
    again = CLIPEmbedder.from_path(demo_dir)
    assert torch.equal(reference_embeddings(again, paths, tmp_path / "cache"), first)
    assert again.images_embedded == 0

    # Keyed by content: a renamed copy is a hit, a new image is the only one embedded.
    copy = tmp_path / "train" / "copy.png"
    copy.write_bytes(paths[0].read_bytes())
    more = paths + [copy] + _save_images(tmp_path / "train", 1, start=50)
    result = reference_embeddings(again, more, tmp_path / "cache")
    assert again.images_embedded == 1 and torch.equal(result[3], first[0])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"clip-reference-{embedder.identity}.safetensors"]


def test_build_scorer_demo_and_user_paths(tmp_path):
    train = _save_images(tmp_path / "train", 2)
    demo_cfg = EvaluateConfig(build_demo_clip=True, demo_clip_dir=str(tmp_path / "demo"))
    scorer = build_scorer(demo_cfg, train, tmp_path / "cache")
    assert scorer.demo_weights and scorer.available_metrics() == {"clip_t", "clip_i", "aesthetic"}

    # A user CLIP folder (here the demo files) without an aesthetic head: real-weights mode, no aesthetic.
    user = build_scorer(EvaluateConfig(clip_path=str(tmp_path / "demo")), [], tmp_path / "cache")
    assert not user.demo_weights and user.available_metrics() == {"clip_t"}

    save_file(laion_state(768), str(tmp_path / "laion.safetensors"))
    cfg = EvaluateConfig(clip_path=str(tmp_path / "demo"), aesthetic_path=str(tmp_path / "laion.safetensors"))
    with pytest.raises(ConfigError, match=r"evaluate.aesthetic_path.*laion.safetensors.*768.*32"):
        build_scorer(cfg, [], tmp_path / "cache")
    with pytest.raises(ConfigError, match="evaluate.clip_path"):
        build_scorer(EvaluateConfig(), [], tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="evaluate.clip_path"):
        build_scorer(EvaluateConfig(clip_path=str(tmp_path / "nowhere")), [], tmp_path / "cache")


def test_demo_folder_deterministic_and_never_overwrites(tmp_path):
    first, second = build_demo_clip(tmp_path / "a"), build_demo_clip(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and AESTHETIC_FILE in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_demo_clip(first) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user data")
    with pytest.raises(ModelLoadError, match="evaluate.demo_clip_dir"):
        build_demo_clip(tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "user data"
