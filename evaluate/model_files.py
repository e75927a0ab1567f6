"""What an evaluation model folder lacks, read from the file names alone (no torch, no transformers).

The pre-flights call these before any model library loads; the loaders call them again.
"""

from __future__ import annotations

from pathlib import Path

from train.errors import ModelLoadError


def clip_folder_problems(folder: Path) -> list[str]:
    """What a CLIP folder lacks for CLIPModel + processor loading; [] when complete (no weights read)."""
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("config.json (the CLIPModel config)")
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((folder / name).is_file() for name in weights):
        problems.append("model.safetensors or pytorch_model.bin (the weights)")
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        problems.append("preprocessor_config.json (the image processor)")
    if not (folder / "tokenizer.json").is_file() and not (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    ):
        problems.append("tokenizer.json or vocab.json + merges.txt (the tokenizer)")
    return problems


JUDGE_FILES = ("config.json", "model.safetensors")


def judge_folder_problems(folder: Path) -> list[str]:
    """What a judge folder (evaluate/judge.py) lacks; [] when complete."""
    return [f"{name}" for name in JUDGE_FILES if not (folder / name).is_file()]


def _folder(key: str, value: str, what: str) -> Path:
    folder = Path(value).expanduser()
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise ModelLoadError(f"{key}: {folder} {state}; give a local folder with {what}")
    return folder


def check_evaluation_files(cfg) -> None:
    """The CLIP folder, aesthetic head and judge an ``EvaluateConfig`` names exist and look complete."""
    if cfg.clip_path:
        folder = _folder("evaluate.clip_path", cfg.clip_path, "a CLIP model and its processor")
        problems = clip_folder_problems(folder)
        if problems:
            raise ModelLoadError(f"evaluate.clip_path: {folder} is not a complete CLIP folder; missing " + "; ".join(problems))
    if cfg.aesthetic_path:
        file = Path(cfg.aesthetic_path).expanduser()
        if not file.is_file():
            state = "is not a file" if file.exists() else "does not exist"
            raise ModelLoadError(f"evaluate.aesthetic_path: {file} {state}")
    if cfg.judge_path:
        folder = _folder("evaluate.judge_path", cfg.judge_path, "the world's judge (config.json, model.safetensors)")
        problems = judge_folder_problems(folder)
        if problems:
            raise ModelLoadError(f"evaluate.judge_path: {folder} is not a judge folder; missing " + ", ".join(problems))
