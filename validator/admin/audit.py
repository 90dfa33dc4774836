"""Who changed what: the actor recorded with every change, and how long the history is kept.

Every admin write records its actor in the token's history (`lua/write.lua`): the name given
(`Admin(actor=...)`, `validator-admin --actor`), else `$VALIDATOR_ACTOR`, else the OS user of the
process and its host (`alice@ops-1`), so that two admins logged in as the same service account on
different machines stay apart. Retention is a count and an age, applied by each write to that
token's history in the same atomic step.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from datetime import timedelta

from validator.errors import ConfigurationError

__all__ = [
    "DEFAULT_HISTORY_LENGTH",
    "MAX_ACTOR_LENGTH",
    "MAX_HISTORY_LENGTH",
    "checked_actor",
    "default_actor",
    "duration_seconds",
    "retention_options",
]

MAX_ACTOR_LENGTH = 128
DEFAULT_HISTORY_LENGTH = 50
# Each write may trim this many entries by age, inside one Lua call: bounded, as Redis blocks.
MAX_HISTORY_LENGTH = 10_000

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def checked_actor(actor: str, what: str = "actor") -> str:
    """`actor` if it is a name a history may hold: printable, no control characters, at most
    `MAX_ACTOR_LENGTH` characters, not blank. Raises `ConfigurationError` naming `what`, never
    repeating the value (it may hold terminal escapes)."""
    if not isinstance(actor, str) or not actor.strip():
        raise ConfigurationError(f"{what} must name who makes the change (it is empty)")
    if len(actor) > MAX_ACTOR_LENGTH:
        raise ConfigurationError(f"{what} is {len(actor)} characters long: at most {MAX_ACTOR_LENGTH}")
    if not actor.isprintable():
        raise ConfigurationError(f"{what} holds control or unprintable characters: use a plain name")
    return actor


def default_actor() -> str:
    """`$VALIDATOR_ACTOR` (checked), else the OS user and host of this process (`user@host`;
    the user id when the system names no user)."""
    named = os.environ.get("VALIDATOR_ACTOR")
    if named is not None:
        return checked_actor(named, "VALIDATOR_ACTOR")
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no name in the environment nor in the user database
        user = f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    # Whatever the system calls itself, the default must be a valid actor.
    name = "".join(c for c in f"{user}@{socket.gethostname()}" if c.isprintable())
    return name[:MAX_ACTOR_LENGTH] or "unknown"


def duration_seconds(value: float | timedelta | str, what: str) -> float:
    """A positive duration: seconds, a `timedelta`, or text such as `90d`, `12h`, `30m`, `45s`, `2w`."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ConfigurationError(f"{what} must be a duration such as 90d, 12h, 30m or 45s")
        seconds = float(match[1]) * _SECONDS[match[2]]
    else:
        seconds = float(value)
    if not seconds > 0:  # NaN included
        raise ConfigurationError(f"{what} must be a positive duration")
    return seconds


def retention_options(
    history_length: int | str | None,
    history_max_age: float | timedelta | str | None,
    names: tuple[str, str] = ("history_length", "history_max_age"),
) -> dict[str, int]:
    """The write options (`lua/write.lua`) of a history retention; None: `$VALIDATOR_HISTORY_LENGTH`
    (else 50 entries) and `$VALIDATOR_HISTORY_MAX_AGE` (else no age limit). `names`: what errors
    call the two."""
    length_what, age_what = names
    if history_length is None and "VALIDATOR_HISTORY_LENGTH" in os.environ:
        history_length, length_what = os.environ["VALIDATOR_HISTORY_LENGTH"], "VALIDATOR_HISTORY_LENGTH"
    if history_max_age is None and os.environ.get("VALIDATOR_HISTORY_MAX_AGE"):
        history_max_age, age_what = os.environ["VALIDATOR_HISTORY_MAX_AGE"], "VALIDATOR_HISTORY_MAX_AGE"
    options: dict[str, int] = {}
    if history_length is not None:
        try:
            length = int(history_length)
        except ValueError:
            raise ConfigurationError(f"{length_what} must be a whole number of entries") from None
        if not 1 <= length <= MAX_HISTORY_LENGTH:
            raise ConfigurationError(f"{length_what} must be between 1 and {MAX_HISTORY_LENGTH}")
        options["history_length"] = length
    if history_max_age is not None:
        options["history_max_age_ms"] = max(1, round(duration_seconds(history_max_age, age_what) * 1000))
    return options
