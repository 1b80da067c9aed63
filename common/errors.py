"""One exception family for mistakes a user can fix.

`cli.py` catches `UserError` only: it prints one line (where, what, how to fix) and exits
non-zero; any other exception is a bug and keeps its traceback. `--debug` shows the traceback
of a `UserError` too.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input: the message names the place and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.where = where
        self.what = message
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f" — fix: {self.fix}"
        return text


class ConfigError(UserError):
    """A config file or flag is wrong (unknown key, bad type, bad value)."""


class DataError(UserError):
    """A data file or record is wrong (malformed line, missing field, empty dataset)."""


class ModelError(UserError):
    """A model path, weight file or tokenizer cannot be used."""


class AdapterError(UserError):
    """An adapter does not fit its base model or is damaged."""


class BackendError(UserError):
    """A backend is missing on this machine or cannot do what was asked."""


class TrainingError(UserError):
    """Training stopped for a reason the user must act on (NaN loss, output dir exists...)."""
