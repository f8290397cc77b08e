"""Errors raised for bad user input.

Every error a user can trigger with their data or configuration derives from
:class:`HolomodalError`, so the CLI can print the message alone (no traceback
from deep inside torch) and exit with status 2.
"""

from __future__ import annotations


class HolomodalError(Exception):
    """Base class of all errors caused by user input."""


class SchemaError(HolomodalError, ValueError):
    """The schema does not match the data (unknown column, wrong dtype, ...)."""


class DataError(HolomodalError, ValueError):
    """The data itself is unusable (NaN label, unreadable file, empty data set, ...)."""


class ConfigError(HolomodalError, ValueError):
    """A configuration value or override is invalid."""


class RunFolderError(HolomodalError, FileExistsError):
    """A run folder would be overwritten."""
