"""``train.network_weights`` checked against the configured network before the base model loads.

Continuing from a saved LoRA with another family, rank or set of trained parts
fails when the file is loaded into the network, which is after the base model
is loaded (minutes for a real one). The file alone tells its family, ranks and
which parts it holds (``from_file``), so the mismatch is found in the pre-flight.
The module-by-module check still runs when the weights load into the model.
"""

from __future__ import annotations

from pathlib import Path

from train.config import NetworkConfig
from train.errors import ConfigError
from train.networks.from_file import inspect_network_file

KEY = "train.network_weights"


def _differences(found: NetworkConfig, file_family: str, wanted: NetworkConfig) -> list[str]:
    problems = []
    if found.module.get("_target_") != (wanted.module or {}).get("_target_"):
        problems.append(f"it is a {file_family} file but network={wanted.name} is configured (set network={file_family})")
        return problems  # ranks of another family mean something else
    for key, label in (("dim", "rank"), ("conv_dim", "conv rank")):
        have, want = getattr(found, key), getattr(wanted, key)
        if have is not None and want is not None and have != want:
            problems.append(f"its {label} is {have} but network.{key}={want} (set network.{key}={have})")
        elif (have is None) != (want is None) and key == "conv_dim":
            side = "has no" if have is None else "has"
            problems.append(f"it {side} conv modules but network.conv_dim={want} (set network.conv_dim={have})")
    for part, flag in (("U-Net", "train_unet"), ("text encoder", "train_text_encoder")):
        have, want = getattr(found, flag), getattr(wanted, flag)
        if have != want:
            holds = "holds" if have else "has no"
            problems.append(f"it {holds} {part} modules but network.{flag}={str(want).lower()}")
    return problems


def check_network_weights(path: str | Path, wanted: NetworkConfig, key: str = KEY) -> None:
    """One ConfigError naming ``key`` and the file if it cannot continue the configured network."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: no such file: {path}")
    found = inspect_network_file(path, key)
    problems = _differences(found.config, found.family, wanted)
    if problems:
        raise ConfigError(f"{key}: {path} does not match the configured network: " + "; ".join(problems))
