"""Defaults that differ on purpose from kohya's sd-scripts (networks.lora, networks.lora_fa) and LyCORIS.

A run logs them in one line at its start (``Network.log_kohya_differences``), each
with the setting that gives kohya's behaviour. Checked against sd-scripts'
networks/lora.py and lora_fa.py ``create_network`` (conv_alpha unset: 1.0),
train_network.py (the text encoder trains unless --network_train_unet_only) and
LyCORIS's kohya.py (conv_dim unset: network_dim, conv_alpha unset: network_alpha,
wd_on_output unset: True since 3.2.0).
"""

from __future__ import annotations

from typing import NamedTuple

from train.config import NetworkConfig

LYCORIS_MODULE = "lycoris.kohya"


class KohyaDifference(NamedTuple):
    text: str
    # The same numbers give another update than kohya's (a silent scale change): logged as a warning.
    changes_scale: bool = False


FROZEN_TEXT_ENCODER = KohyaDifference(
    "text encoder frozen so its outputs can be cached (kohya trains it unless --network_train_unet_only; "
    "set network.train_text_encoder=true)"
)
DORA_AXIS = KohyaDifference(
    "DoRA magnitude per input column, the layout A1111 and ComfyUI apply (LyCORIS >= 3.2 defaults to per "
    "output row; files say wd_on_output=False, and no setting trains the output-row variant)"
)


def peft_differences(cfg: NetworkConfig, network_module: str) -> list[KohyaDifference]:
    """The differences of a LoRA-like family (kohya ``network_module``) under this config."""
    found = [] if cfg.train_text_encoder else [FROZEN_TEXT_ENCODER]
    lycoris = network_module == LYCORIS_MODULE
    # kohya's networks.lora / lora_fa: conv_alpha unset is 1.0; ours (and LyCORIS's) is network.alpha.
    if cfg.conv_dim is not None and cfg.conv_alpha is None and not lycoris and cfg.effective_conv_alpha != 1.0:
        found.append(
            KohyaDifference(
                f"conv_alpha unset: the 3x3 convs use network.alpha={cfg.alpha:g}, scale "
                f"{cfg.effective_conv_alpha / cfg.conv_dim:g}, where kohya's {network_module} uses conv_alpha 1.0, "
                f"scale {1 / cfg.conv_dim:g}; set network.conv_alpha=1",
                changes_scale=True,
            )
        )
    if cfg.conv_dim is None and lycoris:
        found.append(
            KohyaDifference(
                "conv_dim unset: no ResNet/sampler convs adapted (LyCORIS adapts them at conv_dim = dim, "
                f"conv_alpha = alpha; set network.conv_dim={cfg.dim})"
            )
        )
    return found


def describe(family: str, found: list[KohyaDifference]) -> str:
    return f"{family} differs from kohya/LyCORIS here: " + "; ".join(d.text for d in found)
