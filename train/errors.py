"""User-facing errors: one clear message, no traceback.

Anything a user can fix by editing a config, a path or a dataset raises a
``UserError``. The entry points catch it, print the message and exit 2, so a
traceback always means a bug in this project, never bad input.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message names the file or key at fault."""


class ConfigError(UserError):
    """A config key has an impossible value."""


class DatasetError(UserError):
    """Images, captions or the dataset TOML are unusable.

    ``problems`` lists every bad file or key, so one run reports them all.
    """

    def __init__(self, problems: list[str], header: str = "The dataset has problems"):
        self.problems = list(problems)
        lines = [f"{header} ({len(self.problems)}):"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ModelLoadError(UserError):
    """The base model path is missing, incomplete or of an unknown format."""
