"""Hydra accepts sweepers defined in the hydra_plugins namespace only.

The sweeper lives in sweeper/; this subclass gives it a name Hydra accepts
(`hydra_plugins.lora_sweeper.LoRASweeper`, the `_target_` of hydra/sweeper=lora
and of its alias hydra/sweeper=optuna). Hydra imports this module when it
discovers plugins, before it composes a config: the sweeper's config groups
(hydra/sweeper, hydra/sweeper/sampler) are registered here.
"""

from sweeper.config_store import register_sweeper_configs
from sweeper.hydra_sweeper import LoRASweeper as _LoRASweeper

register_sweeper_configs()


class LoRASweeper(_LoRASweeper):
    pass
