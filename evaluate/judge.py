"""The world's judge: classifiers of shape, colour and background, trained on the generator's labels.

It is independent of CLIP, of the aesthetic head and of every objective: a
small convolutional net that has only ever seen the generator's images and
their true labels (evaluate/judge_training.py). Its verdicts are the ground
truth a sweep is checked against, never what it optimises.

The math is pure (``verdict_scores``); ``Judge`` is the thin layer that holds
the net and turns images into verdicts. The judge is saved as a folder:
``config.json`` (labels, layer widths) and ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from evaluate.model_files import JUDGE_FILES, judge_folder_problems
from train.atomic import replacing_dir
from train.data import world
from train.errors import ModelLoadError

JUDGE_PATH_KEY = "evaluate.judge_path"
# Beyond the world's shapes: "other" (a blob that is none of them) and "none" (an empty background),
# so a render that shows no shape of the world is not forced into one.
SHAPE_LABELS = (*world.SHAPES, "other", "none")
COLOUR_LABELS = tuple(world.COLOURS)
BACKGROUND_LABELS = tuple(world.BACKGROUNDS)
CONFIG_FILE, WEIGHTS_FILE = JUDGE_FILES


class JudgeNet(nn.Module):
    """A small conv net with one head per label family; 64x64 RGB in [0, 1]."""

    def __init__(self, width: int = 32, shapes: int = len(SHAPE_LABELS), colours: int = len(COLOUR_LABELS),
                 backgrounds: int = len(BACKGROUND_LABELS)):
        super().__init__()
        self.width = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, width, 2),  # 32x32
            block(width, width, 1),
            block(width, 2 * width, 2),  # 16x16
            block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2),  # 8x8
            block(4 * width, 4 * width, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.shape = nn.Linear(4 * width, shapes)
        self.colour = nn.Linear(4 * width, colours)
        self.background = nn.Linear(4 * width, backgrounds)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.features(x)
        return self.shape(h), self.colour(h), self.background(h)


@dataclass(frozen=True)
class Verdict:
    shape: str
    colour: str
    background: str


def verdict_scores(verdicts: list[Verdict], expectations: list[world.Expectation]) -> dict[str, float]:
    """``judge_fidelity`` and ``judge_editability`` over the renders of concept prompts.

    fidelity: the share of concept renders that show the concept's shape. editability: among those,
    the share that also show the colour and background their prompt asks for (what it does not name
    is not checked). NaN where there is nothing to count: no concept prompt, or no render of the shape.
    """
    pairs = [(v, e) for v, e in zip(verdicts, expectations, strict=True) if e.concept]
    shown = [(v, e) for v, e in pairs if v.shape == world.CONCEPT_SHAPE]
    edited = [
        (v, e)
        for v, e in shown
        if (e.colour is None or v.colour == e.colour) and (e.background is None or v.background == e.background)
    ]
    return {
        "judge_fidelity": len(shown) / len(pairs) if pairs else float("nan"),
        "judge_editability": len(edited) / len(shown) if shown else float("nan"),
    }


def to_batch(images: list[Image.Image]) -> Tensor:
    """64x64 RGB images as the judge's input; other sizes are resized as a render of another size would be."""
    resized = [im.convert("RGB").resize((world.SIZE, world.SIZE), Image.Resampling.BILINEAR)
               if im.size != (world.SIZE, world.SIZE) else im.convert("RGB") for im in images]
    return torch.from_numpy(world.to_array(resized))


class Judge:
    """The trained net and its labels; ``__call__`` gives one verdict per image."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], batch_size: int = 64) -> list[Verdict]:
        verdicts = []
        for start in range(0, len(images), batch_size):
            logits = self.net(to_batch(images[start : start + batch_size]))
            picks = [head.argmax(dim=1).tolist() for head in logits]
            verdicts += [
                Verdict(SHAPE_LABELS[s], COLOUR_LABELS[c], BACKGROUND_LABELS[b]) for s, c, b in zip(*picks, strict=True)
            ]
        return verdicts

    def save(self, folder: str | os.PathLike) -> Path:
        config = {"width": self.net.width, "shapes": SHAPE_LABELS, "colours": COLOUR_LABELS,
                  "backgrounds": BACKGROUND_LABELS, "image_size": world.SIZE}
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        target = Path(folder)
        with replacing_dir(target) as tmp:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            save_file(state, str(tmp / WEIGHTS_FILE))
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike, key: str = JUDGE_PATH_KEY) -> Judge:
        path = Path(folder).expanduser()
        problems = judge_folder_problems(path) if path.is_dir() else [f"{path} does not exist"]
        if problems:
            raise ModelLoadError(f"{key}: {path} is not a judge folder; missing " + ", ".join(problems))
        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            state = load_file(path / WEIGHTS_FILE)
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelLoadError(f"{key}: cannot read the judge in {path} ({exc})") from None
        labels = (tuple(config.get("shapes", ())), tuple(config.get("colours", ())), tuple(config.get("backgrounds", ())))
        if labels != (SHAPE_LABELS, COLOUR_LABELS, BACKGROUND_LABELS):
            raise ModelLoadError(f"{key}: the judge in {path} was trained on other labels than this world's")
        net = JudgeNet(int(config.get("width", 32)))
        try:
            net.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise ModelLoadError(f"{key}: the weights in {path} do not fit its config ({exc})") from None
        return cls(net)


class JudgeScorer:
    """Verdicts on renders and their scores over the prompts they were rendered from; what the evaluator calls."""

    def __init__(self, judge: Judge):
        self.judge = judge

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> JudgeScorer:
        return cls(Judge.load(path))

    def score(self, images: list[Image.Image], prompts: list[str]) -> tuple[list[Verdict], dict[str, float]]:
        verdicts = self.judge(images)
        return verdicts, verdict_scores(verdicts, [world.read_prompt(p) for p in prompts])


def label_shares(verdicts: list[Verdict], truths: list) -> dict[str, float]:
    """Per label family, the share of verdicts that match ``truths`` (scenes or expectations, by attribute)."""
    return {
        name: float(np.mean([getattr(v, name) == getattr(t, name) for v, t in zip(verdicts, truths, strict=True)]))
        for name in ("shape", "colour", "background")
    }


def accuracy(judge: Judge, scenes: list[world.Scene]) -> dict[str, float]:
    """Per label family, the share of fresh generator images the judge labels right."""
    return label_shares(judge([world.render(s) for s in scenes]), scenes)
