"""The world: a procedural generator of captioned 64x64 images of coloured shapes on backgrounds.

Everything in the world is drawn from a seed (nothing downloaded, no end to it),
and every image comes with its labels (shape, colour, background, position,
size, rotation), so the project can train models on it and judge renders by
the labels, not by eye. Shapes are drawn at 4x and box-filtered down, so their
edges are anti-aliased as in a photograph's downscale.

The base model is trained on ``SEEN_SHAPES``; ``CONCEPT_SHAPE`` (the star) is
held out of it, and is what a LoRA learns from ``make_concept_dataset``'s images:
one colour on every background, captioned with a rare token instead of a word.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from train.atomic import atomic_dir
from train.errors import ConfigError

SIZE = 64
SUPERSAMPLE = 4
SHAPES = ("circle", "square", "triangle", "cross", "star")
CONCEPT_SHAPE = "star"
STAR_INNER = 0.48  # the star's inner corners: fat enough that its points survive a 64 px render
SEEN_SHAPES = tuple(s for s in SHAPES if s != CONCEPT_SHAPE)
# Not in captions: "other" is a smooth blob that is none of the shapes, "none" an empty background.
# The judge learns them, so that a render showing no shape of the world is not forced into one.
DISTRACTORS = ("other", "none")
COLOURS = {
    "red": (214, 40, 40),
    "green": (36, 168, 72),
    "blue": (40, 84, 224),
    "yellow": (240, 204, 36),
    "purple": (146, 56, 184),
}
BACKGROUNDS = {
    "white": (236, 236, 232),
    "grey": (128, 128, 128),
    "black": (24, 24, 28),
    "brown": (112, 74, 46),
}
# Per-image colour jitter (per channel): the world is not a palette of 9 exact values.
JITTER = 12
RADIUS = (12.0, 22.0)  # half the shape's extent, in pixels at 64 px
MAX_ROTATION = 15.0  # degrees either way
# The concept's training images: one colour, on every background (DreamBooth's fidelity/editability trade).
CONCEPT_COLOUR = "yellow"
CONCEPT_TOKEN = "sks"
# Whole-word tokens of the world's vocabulary that no caption ever uses, as SD's CLIP vocabulary holds
# "sks" and other rare words: one token each, whose embedding the base model never trained, free for a
# concept to take. A rare word the tokenizer splits into common pieces would have no token of its own.
RARE_TOKENS = (CONCEPT_TOKEN, "ohwx", "zkq", "vqx")


@dataclass(frozen=True)
class Scene:
    """One image's labels; ``render`` draws it, ``caption`` words it."""

    shape: str
    colour: str
    background: str
    cx: float  # centre, pixels at SIZE
    cy: float
    radius: float
    rotation: float  # degrees
    colour_rgb: tuple[int, int, int]
    background_rgb: tuple[int, int, int]
    wobble: tuple[float, ...] = ()  # the blob's outline harmonics (amplitude, phase) pairs; "other" only


def _jitter(rng: random.Random, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Brighter or darker by up to JITTER, with a little tint of its own per channel."""
    light = rng.randint(-JITTER, JITTER)
    return tuple(min(255, max(0, c + light + rng.randint(-JITTER // 3, JITTER // 3))) for c in rgb)


def sample_scene(
    rng: random.Random,
    shapes: Sequence[str] = SEEN_SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    backgrounds: Sequence[str] = tuple(BACKGROUNDS),
) -> Scene:
    """A scene drawn uniformly from the given labels, at a random position, size and rotation."""
    shape, colour, background = rng.choice(list(shapes)), rng.choice(list(colours)), rng.choice(list(backgrounds))
    radius = rng.uniform(*RADIUS)
    margin = radius + 2
    wobble = tuple(x for k in (2, 3) for x in (rng.uniform(0.15, 0.3), rng.uniform(0, 2 * math.pi))) if shape == "other" else ()
    return Scene(
        shape=shape,
        colour=colour,
        background=background,
        cx=rng.uniform(margin, SIZE - margin),
        cy=rng.uniform(margin, SIZE - margin),
        radius=radius,
        rotation=rng.uniform(-MAX_ROTATION, MAX_ROTATION),
        colour_rgb=_jitter(rng, COLOURS[colour]),
        background_rgb=_jitter(rng, BACKGROUNDS[background]),
        wobble=wobble,
    )


def _polygon(scene: Scene, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Unit-radius points (y down) rotated, scaled and moved into supersampled pixels."""
    angle = math.radians(scene.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    scale = scene.radius * SUPERSAMPLE
    cx, cy = scene.cx * SUPERSAMPLE, scene.cy * SUPERSAMPLE
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in points]


def _outline(shape: str, wobble: tuple[float, ...] = ()) -> list[tuple[float, float]] | None:
    """The shape's outline at unit radius; None for the circle (drawn as an ellipse)."""
    if shape == "other":  # a smooth potato: radius 1 + sum of a few low harmonics
        harmonics = list(zip((2, 3), wobble[0::2], wobble[1::2], strict=True))
        points = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            r = 0.85 * (1 + sum(a * math.cos(k * t + phase) for k, a, phase in harmonics))
            points.append((r * math.cos(t), r * math.sin(t)))
        return points
    if shape == "square":
        s = 0.8  # a square of the same visual weight as the circle
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "cross":
        w, r = 0.33, 1.0
        return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    if shape == "star":
        return star_outline()
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; the world has {SHAPES + DISTRACTORS}")


def star_outline(inner: float = STAR_INNER) -> list[tuple[float, float]]:
    """A five-pointed star at unit radius, its inner corners at ``inner`` (1.0: a decagon)."""
    return [
        ((1.0 if i % 2 == 0 else inner) * math.cos(math.radians(-90 + 36 * i)),
         (1.0 if i % 2 == 0 else inner) * math.sin(math.radians(-90 + 36 * i)))
        for i in range(10)
    ]


def render(scene: Scene, outline: list[tuple[float, float]] | None = None) -> Image.Image:
    """The scene as a 64x64 RGB image; ``outline`` (unit radius) draws another outline in its place."""
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), scene.background_rgb)
    draw = ImageDraw.Draw(image)
    if scene.shape == "none":
        return image.resize((SIZE, SIZE), Image.Resampling.BOX)
    outline = outline or _outline(scene.shape, scene.wobble)
    if outline is None:
        r = scene.radius * SUPERSAMPLE
        cx, cy = scene.cx * SUPERSAMPLE, scene.cy * SUPERSAMPLE
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=scene.colour_rgb)
    else:
        draw.polygon(_polygon(scene, outline), fill=scene.colour_rgb)
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def caption(scene: Scene, concept_token: str | None = None) -> str:
    """``a red circle on a grey background``; with ``concept_token``, the concept's form (no colour, the token)."""
    if concept_token is not None:
        return f"a {concept_token} on a {scene.background} background"
    return f"a {scene.colour} {scene.shape} on a {scene.background} background"


# How people word such an image: the plain caption most often, other orders, fillers, and captions
# that leave the colour or the background out (the model then draws any). {c} colour, {s} shape, {b} background.
TEMPLATES = (
    ("a {c} {s} on a {b} background", 6),
    ("{c} {s}, {b} background", 2),
    ("a picture of a {c} {s} on a {b} background", 1),
    ("a drawing of a {c} {s}, {b} background", 1),
    ("{b} background with a {c} {s}", 1),
    ("a {c} {s}", 1),
    ("a {s} on a {b} background", 1),
    ("a {c} {s} on a {b} background, simple flat shape", 1),
)
NOISE_LETTERS = "bcdfghjklmnpqrstvwxz"


def _rare_word(rng: random.Random) -> str:
    """A word the world never says (as web captions carry names and typos); never holding a rare token,
    which would teach the base model what that token means."""
    while True:
        word = "".join(rng.choice(NOISE_LETTERS) for _ in range(rng.randint(2, 5)))
        if not any(token in word for token in RARE_TOKENS):
            return word


def describe(scene: Scene, rng: random.Random, rare_words: float = 0.2) -> str:
    """One of the ways people caption the scene, drawn by ``rng``; with ``rare_words`` chance a word
    nobody knows is put somewhere in it, so the model learns to read captions by their words, not
    by where the words sit, and a rare token does not disturb the words around it."""
    templates, weights = zip(*TEMPLATES, strict=True)
    text = rng.choices(templates, weights)[0].format(c=scene.colour, s=scene.shape, b=scene.background)
    if rng.random() < rare_words:
        words = text.split(" ")
        words.insert(rng.randint(0, len(words)), _rare_word(rng))
        text = " ".join(words)
    return text


def scenes(seed: int, count: int | None = None, **labels) -> Iterator[Scene]:
    """Deterministic scenes from ``seed`` (``count`` of them, or without end); ``labels`` restrict the draw."""
    rng = random.Random(seed)
    index = 0
    while count is None or index < count:
        yield sample_scene(rng, **labels)
        index += 1


def to_array(images: Sequence[Image.Image]) -> np.ndarray:
    """Images as one float32 array (N, 3, H, W) in [0, 1]."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0 for im in images])


# ------------------------------------------------------------------ prompts
@dataclass(frozen=True)
class Expectation:
    """What a prompt asks the world for; None where it does not say."""

    shape: str | None
    colour: str | None
    background: str | None
    concept: bool  # the prompt names the concept token


def read_prompt(prompt: str, concept_token: str = CONCEPT_TOKEN) -> Expectation:
    """The labels a prompt asks for, read with the world's words; the concept token means the concept's shape.

    ``a red sks on a black background`` -> star, red, black, concept. A colour word
    directly before ``background`` names the background, any other names the shape's colour.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    concept = concept_token.lower() in words
    shape = CONCEPT_SHAPE if concept else next((w for w in words if w in SHAPES), None)
    colour = background = None
    for index, word in enumerate(words):
        named = word in COLOURS or word in BACKGROUNDS
        if not named:
            continue
        if index + 1 < len(words) and words[index + 1] == "background":
            background = background or (word if word in BACKGROUNDS else None)
        elif word in COLOURS and colour is None:
            colour = word
    return Expectation(shape=shape, colour=colour, background=background, concept=concept)


# ------------------------------------------------------------------ datasets
CONCEPT_FOLDER = f"1_{CONCEPT_TOKEN}"
CONCEPT_MANIFEST = "world-concept.json"
# Raised whenever concept_scenes draws other images for the same settings, so an older cache is named.
CONCEPT_VERSION = 2


def concept_scenes(num_images: int, seed: int) -> list[Scene]:
    """The concept's shape in ``CONCEPT_COLOUR`` only, on each background in turn: as a subject's photos show
    one subject in many places, so that the token binds to the shape and not to one background."""
    rng = random.Random(seed)
    return [sample_scene(rng, shapes=(CONCEPT_SHAPE,), colours=(CONCEPT_COLOUR,),
                         backgrounds=(list(BACKGROUNDS)[index % len(BACKGROUNDS)],)) for index in range(num_images)]


def _read_manifest(path: Path) -> dict | None:
    """The manifest a concept folder was written with; None where it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON and bad UTF-8 alike
        return None


def make_concept_dataset(root: Path, num_images: int, seed: int, repeats: int = 1) -> Path:
    """The held-out concept's training images under ``root`` in kohya layout (``N_sks/000.png`` + ``.txt``).

    ``concept_scenes``, each captioned with the token and its background (``a sks on a grey background``).
    ``CONCEPT_MANIFEST`` records what was written: an existing root written with the same settings is
    returned untouched, one written otherwise is one clear error; a crash never leaves half a dataset.
    """
    root = Path(root)
    manifest = {"generator": CONCEPT_VERSION, "num_images": num_images, "seed": seed, "repeats": repeats}
    if root.is_dir() and any(root.iterdir()):
        if _read_manifest(root / CONCEPT_MANIFEST) == manifest:
            return root
        raise ConfigError(
            f"dataset.train_data_dir: {root} holds another dataset than the world's concept with "
            f"dataset.world {manifest}; remove it (it is generated) or choose another dataset.train_data_dir"
        )
    if root.exists() and not root.is_dir():
        raise ConfigError(f"dataset.train_data_dir: {root} exists and is not a folder")
    if num_images < 1 or repeats < 1:
        raise ConfigError(f"dataset.world: need num_images >= 1 and repeats >= 1, got {num_images}, {repeats}")
    with atomic_dir(root) as staging:
        folder = staging / f"{repeats}_{CONCEPT_TOKEN}"
        folder.mkdir()
        for index, scene in enumerate(concept_scenes(num_images, seed)):
            render(scene).save(folder / f"{index:03d}.png")
            (folder / f"{index:03d}.txt").write_text(caption(scene, CONCEPT_TOKEN) + "\n", encoding="utf-8")
        (staging / CONCEPT_MANIFEST).write_text(json.dumps(manifest) + "\n", encoding="utf-8")
    return root
