"""Network families: LoRA/LoCon, LoRA-FA, DoRA, LoHa, LoKr and hypernetworks, chosen by ``network.module``.

``build_network`` checks the config and builds the family without a model, so a bad
option fails in the pre-flight; ``Network.apply`` then adds it to the loaded model.
"""

from __future__ import annotations

from train.config import NetworkConfig
from train.errors import ConfigError
from train.networks.base import MaxNormStats, Network, NetworkTargets

# Names of conf/network/*.yaml, chosen on the command line as network=<name>.
SHIPPED_NETWORKS = ("lora", "locon", "lora_fa", "dora", "loha", "lokr", "hypernetwork")

__all__ = ["SHIPPED_NETWORKS", "MaxNormStats", "Network", "NetworkTargets", "build_network"]


def build_network(cfg: NetworkConfig) -> Network:
    """The family of ``network.module._target_`` with its options; ConfigError naming the key if wrong."""
    from train.optimizers import check_factory_call, instantiate_factory

    factory = instantiate_factory(cfg.module, "network", SHIPPED_NETWORKS, field="module")
    check_factory_call(factory, "network", cfg, field="module")
    network = factory(cfg)
    if not isinstance(network, Network):
        target = cfg.module.get("_target_") if hasattr(cfg.module, "get") else cfg.module
        raise ConfigError(f"network.module._target_: {target!r} is not a network family (train.networks.*)")
    return network
