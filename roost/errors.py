"""Errors a user can cause and fix. The CLI prints each as one line and exits 2; any other
exception is a bug in roost and shows its traceback (exit 1)."""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for, said in one line."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A recipe or option is wrong; the message names the field."""


class InputError(UserError, ValueError):
    """The input cannot be read as a dataset of a known kind (missing file, columns, ...)."""


class ModelError(UserError, ValueError):
    """A model cannot be found or cannot play the role asked of it."""


class OutputMismatch(UserError):
    """The output directory holds a dataset made by a different recipe."""
