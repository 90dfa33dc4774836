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


class StoreUnmarked(StoreUnavailable):
    """A check refused (failed closed): the store answers but carries no marker (never
    initialised, or wiped) or the marker of another secret. Validators read the marker again
    until `Admin.init` or a restore (`validator-admin import --restore`) makes the store sound."""


class StoreNotInitialised(ValidatorError):
    """An admin write refused: the store carries no marker (never initialised, or wiped), or the
    marker of another secret. Nothing was written.

    `state` is "missing" or "mismatch". Validators fail closed on such a store; initialise a new
    store (`Admin.init`) or restore a wiped one from an export (`validator-admin import --restore`).
    """

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state
