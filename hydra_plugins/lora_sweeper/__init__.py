"""Hydra accepts sweepers defined in the hydra_plugins namespace only.

The sweeper lives in sweeper/; this subclass gives it a name Hydra accepts
(`hydra_plugins.lora_sweeper.LoRASweeper`, the `_target_` of hydra/sweeper=lora).
"""

from sweeper.hydra_sweeper import LoRASweeper as _LoRASweeper


class LoRASweeper(_LoRASweeper):
    pass
