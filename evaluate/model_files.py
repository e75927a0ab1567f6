"""What an evaluation model folder lacks, read from the file names alone (no torch, no transformers).

The pre-flights call these before any model library loads; the loaders call them again.
"""

from __future__ import annotations

from pathlib import Path


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
