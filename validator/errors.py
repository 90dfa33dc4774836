"""The exceptions raised across the public API: one root, a few meaningful subclasses."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidEntry",
    "LimitExceeded",
    "StoreNotInitialised",
    "StoreUnavailable",
    "StoreUnmarked",
    "ValidatorError",
]


class ValidatorError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigurationError(ValidatorError):
    """A setting, URL or option is wrong; raised when the object is built, not later."""


class InvalidEntry(ValidatorError):
    """Admin input refused: not a hostname, not a public IP, unknown switch, ..."""


class LimitExceeded(ValidatorError):
    """A write would leave more entries in a list than the configured limit allows."""

    def __init__(self, message: str, *, limit: int, stored: list[str]) -> None:
        super().__init__(message)
        self.limit = limit
        self.stored = stored


class StoreUnavailable(ValidatorError):
    """The restriction store could not be reached or answered with an error."""


class StoreNotInitialised(StoreUnavailable):
    """The store carries no marker of this secret: never initialised, or wiped, or marked for
    another secret. A check fails closed with it (validators read the marker again until
    `Admin.init` or a restore, `validator-admin import --restore`, makes the store sound); an
    admin write is refused with it, and nothing is written.

    `state` is "missing" or "mismatch" (a validator's check says "missing" for both).
    """

    def __init__(self, message: str, *, state: str = "missing") -> None:
        super().__init__(message)
        self.state = state


# Deprecated: the same state under its older name, for checks that failed closed. Catch
# `StoreNotInitialised` (or `StoreUnavailable`); this alias goes in a later minor version.
StoreUnmarked = StoreNotInitialised
