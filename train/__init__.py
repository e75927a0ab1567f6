"""The LoRA trainer: ``python -m train`` runs one training run (see recipe.py)."""

import logging


class _KnownNoise(logging.Filter):
    """Drops two import-time warnings that say nothing to a user of this trainer:
    bitsandbytes' optional CPU kernel from a model hub (never fetched here) and
    transformers' PIL fallback when torchvision is absent."""

    MESSAGES = ("from kernels-community", "requires torchvision (not installed)")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in str(record.msg) for m in self.MESSAGES)


for _name in ("bitsandbytes.backends.cpu.ops", "transformers.utils.import_utils"):
    logging.getLogger(_name).addFilter(_KnownNoise())
