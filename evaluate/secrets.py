"""Keep secrets out of anything a run writes down: W&B configs, TensorBoard text, warnings.

Secrets are found by key name (``wandb_api_key``, ``password``, ``hf_token``) and
inside URLs (``postgresql://user:pass@host/db``). Values are never guessed at by
their shape: a long random string under an ordinary key is left alone.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

MASK = "***"
# The last word of a key name that marks its value secret. Whole words only, so
# "keep_tokens", "keys" and "caption_extension" stay visible.
SECRET_WORDS = frozenset({"key", "apikey", "token", "password", "passwd", "secret", "credentials", "credential"})
# "PASSWORD" "apiKey" "wandb-api-key" "db.password" -> words.
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# scheme://[user]:password@host -> keep the user, mask the password.
# The password may hold unescaped "@" or ":"; the host after the last "@" may not.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^/?#\s]+)(?=@[^@/?#\s]*)")
# ...?password=x&token=y -> masked query values.
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:[a-z_]*_)?(?:api_?key|key|token|password|passwd|secret)=)[^&#\s]+", re.IGNORECASE
)


def is_secret_key(name: object) -> bool:
    """True when a config key's name says its value is a secret."""
    if not isinstance(name, str):
        return False
    words = [w.lower() for w in _WORD.findall(name)]
    return bool(words) and words[-1] in SECRET_WORDS


def scrub_text(text: str) -> str:
    """Mask passwords inside URLs anywhere in ``text`` (storage URLs, error messages)."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)


def scrub_secrets(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with secret values replaced by ``***``.

    An unset secret (None or "") stays as it is: that it is unset is worth seeing
    and gives nothing away.
    """
    return _scrub(config)


def _scrub(value: Any, key: object = None) -> Any:
    if is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return {k: _scrub(v, k) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


def flatten(config: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nested mappings -> one level with joined keys: {"a": {"b": 1}} -> {"a.b": 1}.

    Lists stay lists; an empty mapping stays as {} so its key is not lost.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            for sub_key, sub_value in flatten(value, sep).items():
                flat[f"{key}{sep}{sub_key}"] = sub_value
        else:
            flat[str(key)] = dict(value) if isinstance(value, Mapping) else value
    return flat


def scrub_argument(arg: str) -> str:
    """One command-line argument with its secret masked: a secret key's value, a URL's password."""
    key, sep, value = arg.partition("=")
    if sep and value and is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]):
        return f"{key}={MASK}"
    return scrub_text(arg)


def scrub_process_argv() -> None:
    """Mask secrets in this process's ``sys.argv``, which W&B records in every run's files.

    Called where a W&B run starts: the command line was parsed long before, and sweep
    workers inherit their controller's argv (a storage URL with its password).
    """
    sys.argv[:] = [scrub_argument(arg) for arg in sys.argv]
