"""The world's generator, its tokenizer and how it reads prompts: deterministic, labelled, in the world's words."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from train.data import world
from train.errors import ConfigError


def _digest(images) -> str:
    return hashlib.sha256(b"".join(im.tobytes() for im in images)).hexdigest()


def test_the_same_seed_draws_the_same_scenes_and_pixels():
    first = list(world.scenes(7, 20, shapes=world.SHAPES))
    again = list(world.scenes(7, 20, shapes=world.SHAPES))
    assert first == again
    assert _digest(world.render(s) for s in first) == _digest(world.render(s) for s in again)
    other = list(world.scenes(8, 20, shapes=world.SHAPES))
    assert other != first


def test_scenes_cover_the_labels_asked_for_and_only_those():
    drawn = list(world.scenes(0, 400))
    assert {s.shape for s in drawn} == set(world.SEEN_SHAPES)  # the star is held out by default
    assert {s.colour for s in drawn} == set(world.COLOURS)
    assert {s.background for s in drawn} == set(world.BACKGROUNDS)
    stars = list(world.scenes(0, 50, shapes=("star",), colours=("red",), backgrounds=("black",)))
    assert {(s.shape, s.colour, s.background) for s in stars} == {("star", "red", "black")}


def test_a_render_shows_its_colour_on_its_background():
    scene = next(world.scenes(3, 1, shapes=("square",), colours=("blue",), backgrounds=("white",)))
    pixels = np.asarray(world.render(scene)).reshape(-1, 3).astype(int)
    assert world.render(scene).size == (world.SIZE, world.SIZE)
    centre = np.asarray(world.render(scene))[int(scene.cy), int(scene.cx)].astype(int)
    assert np.abs(centre - np.array(scene.colour_rgb)).max() <= 1
    corner = pixels[0]
    assert np.abs(corner - np.array(scene.background_rgb)).max() <= 1


def test_every_shape_draws_something_different():
    base = dict(cx=32.0, cy=32.0, radius=18.0, rotation=0.0, colour_rgb=(200, 40, 40), background_rgb=(128, 128, 128))
    wobble = (0.25, 0.0, 0.2, 1.0)
    drawn = {
        shape: world.render(world.Scene(shape, "red", "grey", wobble=wobble if shape == "other" else (), **base))
        for shape in world.SHAPES + world.DISTRACTORS
    }
    assert len({im.tobytes() for im in drawn.values()}) == len(drawn)
    empty = np.asarray(drawn["none"]).reshape(-1, 3)
    assert (empty == empty[0]).all()


def test_captions_say_what_the_scene_shows_and_the_concept_says_its_token():
    scene = next(world.scenes(1, 1, shapes=("circle",), colours=("green",), backgrounds=("brown",)))
    assert world.caption(scene) == "a green circle on a brown background"
    assert world.caption(scene, "sks") == "a sks on a brown background"


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red sks on a black background", ("star", "red", "black", True)),
        ("a sks on a grey background", ("star", None, "grey", True)),
        ("a blue circle on a white background", ("circle", "blue", "white", False)),
        ("A GREEN Triangle, brown background", ("triangle", "green", "brown", False)),
        ("photo of sks", ("star", None, None, True)),
        ("a cat on a sofa", (None, None, None, False)),
    ],
)
def test_a_prompt_is_read_with_the_worlds_words(prompt, expected):
    e = world.read_prompt(prompt)
    assert (e.shape, e.colour, e.background, e.concept) == expected


def test_the_concept_dataset_is_one_colour_on_every_background_in_kohya_layout(tmp_path):
    root = world.make_concept_dataset(tmp_path / "concept", num_images=5, seed=0, repeats=3)
    folder = root / f"3_{world.CONCEPT_TOKEN}"
    images = sorted(folder.glob("*.png"))
    assert len(images) == 5
    captions = {p.read_text().strip() for p in folder.glob("*.txt")}
    assert captions == {f"a {world.CONCEPT_TOKEN} on a {b} background" for b in world.BACKGROUNDS}
    scenes = world.concept_scenes(5, seed=0)
    assert {s.colour for s in scenes} == {world.CONCEPT_COLOUR} and {s.shape for s in scenes} == {world.CONCEPT_SHAPE}
    again = world.make_concept_dataset(tmp_path / "again", num_images=5, seed=0, repeats=3)
    assert [p.read_bytes() for p in images] == [p.read_bytes() for p in sorted((again / folder.name).glob("*.png"))]
    # The same settings find it as it is; other settings (or an older generator's cache) are one clear error.
    assert world.make_concept_dataset(root, num_images=5, seed=0, repeats=3) == root
    with pytest.raises(ConfigError, match=r"dataset.train_data_dir: .* holds another dataset"):
        world.make_concept_dataset(root, num_images=9, seed=1)
    assert len(list(folder.glob("*.png"))) == 5
    # A manifest that is not JSON (a crash of another tool, a hand edit) is the same one message.
    (root / world.CONCEPT_MANIFEST).write_bytes(b"{\"generator\": 2, \xff")
    with pytest.raises(ConfigError, match=r"dataset.train_data_dir: .* holds another dataset"):
        world.make_concept_dataset(root, num_images=5, seed=0, repeats=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="dataset.train_data_dir"):
        world.make_concept_dataset(tmp_path / "file", num_images=2, seed=0)


def test_the_tokenizer_knows_the_worlds_words_and_splits_words_it_never_saw():
    from train.models.world_tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    words = [*world.SHAPES, *world.COLOURS, *world.BACKGROUNDS, "background", "on", "a"]
    assert all(len(tokenizer.tokenize(w)) == 1 for w in words)
    assert len(tokenizer.tokenize("qwfp")) > 1  # a word outside the vocabulary falls apart, as in CLIP
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 77


def test_the_concept_token_is_one_rare_token_no_caption_uses():
    from train.models.world_tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    for token in world.RARE_TOKENS:
        assert tokenizer.tokenize(f"a {token} on a grey background")[1] == f"{token}</w>"
    rng = random.Random(0)
    captions = [world.describe(scene, rng, rare_words=1.0) for scene in world.scenes(5, 3000)]
    pieces = {piece for caption in captions for piece in tokenizer.tokenize(caption)}
    assert not pieces & {f"{token}</w>" for token in world.RARE_TOKENS}
