"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class ShoalError(Exception):
    """An error whose message is meant for the user, not a traceback."""

    exit_code = 1


class UsageError(ShoalError):
    """Bad input from the user (file, flag, id)."""

    exit_code = 2


class MissingDependencyError(ShoalError):
    """A hardware or package path was asked for that this machine lacks."""

    exit_code = 2


class StoreError(ShoalError):
    """The model store could not be read or written."""


class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, timeout, 5xx): transient, worth retrying."""


class IntegrityError(StoreError):
    """A file's sha256 does not match its manifest."""
