"""Who changed what: each token's history of changes (`history`, `history_all`), the actor
recorded with every change, and how long the history is kept.

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
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec

from validator.admin.context import AdminContext
from validator.errors import ConfigurationError

__all__ = [
    "DEFAULT_HISTORY_LENGTH",
    "MAX_ACTOR_LENGTH",
    "MAX_HISTORY_LENGTH",
    "HistoryEntry",
    "checked_actor",
    "default_actor",
    "duration_seconds",
    "history",
    "history_all",
    "retention_options",
]

MAX_ACTOR_LENGTH = 128
DEFAULT_HISTORY_LENGTH = 50
# Each write may trim this many entries by age, inside one Lua call: bounded, as Redis blocks.
MAX_HISTORY_LENGTH = 10_000

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One recorded change to a token (see `lua/write.lua`): when, what, and the version it made.

    `at` is milliseconds since the epoch on the Redis server's clock; `op` is add, remove, set,
    enable, disable, mode, put, or expire (entries that had lapsed, taken out at the token's next
    change); `restriction` ("domain"/"ip") and `entries` belong to list and switch changes,
    `mode` ("enforce"/"report") to a mode change and a put, `domain_enabled` ... `ips` to a put
    (a whole record, as import and suggest write it). `actor`: who made the change (None in
    entries recorded before actors were). Every field `lua/write.lua` records is one here, so
    that `history`, `--json` and `--all` show it (tests/integration/test_history_fields.py).
    """

    at: int
    op: str
    version: int
    actor: str | None = None
    restriction: str | None = None
    entries: list[str] = msgspec.field(default_factory=list)
    domain_enabled: bool | None = None
    ip_enabled: bool | None = None
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)
    # mode, put: the mode after the change (report-only lets every request through: an audit
    # must show the switch).
    mode: str | None = None
    # add, set: the instant (ms since the epoch) the entries stop matching; none: permanent.
    # put: per entry.
    expires_at: int | None = None
    domain_expiry: dict[str, int] = msgspec.field(default_factory=dict)
    ip_expiry: dict[str, int] = msgspec.field(default_factory=dict)


async def history(context: AdminContext, token: str, count: int, *, since_ms: int) -> list[HistoryEntry]:
    """The token's most recent readable changes, newest first, recorded at or after `since_ms`."""
    entries = (_history_entry(raw) for raw in await context.store.history(context.token_hash(token), count))
    return [entry for entry in entries if entry is not None and entry.at >= since_ms]


async def history_all(context: AdminContext, *, since_ms: int) -> AsyncIterator[tuple[str, HistoryEntry]]:
    """Every token's readable changes recorded at or after `since_ms`, oldest first, by token hash."""
    async for token_hash, _, raw in context.store.history_since(since_ms):
        entry = _history_entry(raw)
        if entry is not None:
            yield token_hash, entry


def _history_entry(raw: str) -> HistoryEntry | None:
    try:
        return msgspec.json.decode(raw, type=HistoryEntry)
    except msgspec.DecodeError:  # ValidationError included
        return None


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
