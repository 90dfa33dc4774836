"""Plain records shared by every layer: the stored restrictions and the decision."""

from __future__ import annotations

import enum
import math
import re
import time
from typing import Literal, NamedTuple, Self

import msgspec

__all__ = [
    "ALL_DECISIONS",
    "DEFAULT_MAX_TOKEN_LENGTH",
    "MAX_TOKEN_LENGTH",
    "Decision",
    "DeniedRequest",
    "Entry",
    "Mode",
    "Reason",
    "RestrictionKind",
    "Restrictions",
    "Source",
    "decision",
    "is_token",
    "reported",
    "token_rule",
]

# docs/behaviour.md, "Tokens are visible ASCII": 1 to N characters from `!` to `~`. N is the validators'
# `max_token_length` (DEFAULT_MAX_TOKEN_LENGTH, at most MAX_TOKEN_LENGTH). The admin tools accept
# up to MAX_TOKEN_LENGTH, so any token a validator may be configured to check can be restricted;
# one too long for a given validator is refused there (fail closed), never opened.
DEFAULT_MAX_TOKEN_LENGTH = 512
MAX_TOKEN_LENGTH = 4096
_VISIBLE_ASCII = re.compile(r"[!-~]+")

# The clock that entries' expiries are instants of: the wall clock, in seconds since the epoch
# (`lua/write.lua` stores them in ms, by the Redis server's clock). Read it as
# `model.wall_clock()`, so that tests can move time by setting this attribute.
wall_clock = time.time


class Source(enum.Enum):
    """How a request was classified (docs/behaviour.md, "The decision")."""

    FRONT_END = "front_end"
    BACK_END = "back_end"


class Reason(enum.Enum):
    """Which rule decided. Never sent to the client; for logs, metrics and `explain`."""

    UNRESTRICTED = "unrestricted"
    UNKNOWN_TOKEN = "unknown_token"
    MALFORMED_TOKEN = "malformed_token"
    DOMAIN_LISTED = "domain_listed"
    DOMAIN_NOT_LISTED = "domain_not_listed"
    NO_DOMAIN = "no_domain"
    FRONT_END_NOT_ALLOWED = "front_end_not_allowed"
    IP_LISTED = "ip_listed"
    IP_NOT_LISTED = "ip_not_listed"
    NO_IP = "no_ip"
    BACK_END_NOT_ALLOWED = "back_end_not_allowed"
    STORE_UNAVAILABLE = "store_unavailable"


def is_token(token: str, max_length: int = DEFAULT_MAX_TOKEN_LENGTH) -> bool:
    """Whether `token` could have been issued: 1 to `max_length` visible ASCII characters."""
    return len(token) <= max_length and _VISIBLE_ASCII.fullmatch(token) is not None


def token_rule(max_length: int = DEFAULT_MAX_TOKEN_LENGTH) -> str:
    """The rule `is_token` checks, in words, for error messages (which never repeat the token)."""
    return f"tokens are visible ASCII characters (! to ~), at most {max_length} long"


class Mode(enum.Enum):
    """Whether a token's restrictions deny (`enforce`) or only report what they would deny."""

    ENFORCE = "enforce"
    REPORT = "report"


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one check.

    `reported` marks a would-be denial let through by report-only mode: `allowed` is True, and
    `reason` names the rule that would have denied. Decisions are shared constants (see
    `decision()`), so the hot path allocates nothing.
    """

    allowed: bool
    reason: Reason
    source: Source | None = None
    reported: bool = False

    @property
    def denied_by_rules(self) -> bool:
        """Whether the rules deny this request (whether or not report-only let it through)."""
        return not self.allowed or self.reported


def _all_decisions() -> dict[tuple[bool, Reason, Source | None, bool], Decision]:
    sources: tuple[Source | None, ...] = (None, *Source)
    return {
        (allowed, reason, source, reported): Decision(allowed, reason, source, reported)
        for allowed in (True, False)
        for reason in Reason
        for source in sources
        for reported in (False, True)
        if allowed or not reported
    }


_DECISIONS = _all_decisions()
ALL_DECISIONS: tuple[Decision, ...] = tuple(_DECISIONS.values())


def decision(allowed: bool, reason: Reason, source: Source | None = None) -> Decision:
    """The shared `Decision` constant for these values."""
    return _DECISIONS[allowed, reason, source, False]


def reported(denial: Decision) -> Decision:
    """The report-only twin of a denial: allowed, with the same reason and source."""
    return _DECISIONS[True, denial.reason, denial.source, True]


# The kind of a restriction: its list of domains (for browsers) or of IPs (for servers). Not to be
# confused with `Restrictions`, the record of one token's restrictions of every kind.
RestrictionKind = Literal["domain", "ip"]


class Restrictions(msgspec.Struct, kw_only=True):
    """One token's stored restrictions, as the admin sees them.

    `domains` and `ips` hold normalised entries (see `validator.rules.entries` and
    `validator.rules.networks`). `version` grows by one with every write, so two reads can tell
    whether anything changed in between. A record read from the store may still hold entries
    that have lapsed (they are swept at the token's next change): `active()` leaves them out, as
    validators do.
    """

    domain_enabled: bool = False
    ip_enabled: bool = False
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)
    version: int = 0
    mode: Mode = Mode.ENFORCE
    # Entries that expire: entry -> the instant it stops matching, in milliseconds since the
    # epoch (wall clock). An entry not named here is permanent.
    domain_expiry: dict[str, int] = msgspec.field(default_factory=dict)
    ip_expiry: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def next_expiry(self) -> int | None:
        """The earliest instant (ms since the epoch) at which one of the entries stops matching."""
        if not (self.domain_expiry or self.ip_expiry):
            return None
        return min([*self.domain_expiry.values(), *self.ip_expiry.values()])

    def active(self, now: float) -> Restrictions:
        """These restrictions without the entries that have lapsed at `now` (seconds since the
        epoch, as `time.time()`): an entry lapses when `expiry / 1000 <= now`. Itself when none has."""
        if not (self.domain_expiry or self.ip_expiry):
            return self
        domain_gone = {entry for entry, at in self.domain_expiry.items() if at / 1000 <= now}
        ip_gone = {entry for entry, at in self.ip_expiry.items() if at / 1000 <= now}
        if not (domain_gone or ip_gone):
            return self
        return msgspec.structs.replace(
            self,
            domains=[entry for entry in self.domains if entry not in domain_gone],
            ips=[entry for entry in self.ips if entry not in ip_gone],
            domain_expiry={e: at for e, at in self.domain_expiry.items() if e not in domain_gone},
            ip_expiry={e: at for e, at in self.ip_expiry.items() if e not in ip_gone},
        )


class DeniedRequest(NamedTuple):
    """One denial as queued and as stored (stream fields: at, source, seen, reason, mode, origin)."""

    at_ms: int
    token_hash: str
    source: str
    seen: str  # the request's domain or client IP ("-" when it had none)
    reason: str
    mode: str  # "enforce": it was denied; "report": report-only let it through
    origin: str  # front end: scheme://host[:port] of Origin/Referer (never a path), for replay


class Entry:
    """What the cache holds for one token: fresh until `fresh_until`, usable on store errors
    until `usable_until`.

    The cached value either is the entry itself (a subclass: the validator's `TokenRules`) or
    is carried by one (`Boxed`). The first spares an object per cached token (~70 bytes,
    benchmarks: memory) and, on every hit, the fetch of it from memory.
    An entry is held under one token at a time: `Cache` stores a copy (`copied`) of one that
    is already held (a value shared by several tokens, as the rules of unknown tokens are).
    """

    __slots__ = ("fresh_until", "recent", "token_hash", "usable_until")

    # When the value stops being right as it is: the wall-clock instant (`wall_clock()`) at which
    # an entry of its rules expires (`validator.rules.decide.ExpiringRules` has a slot of this
    # name). The cache serves it fresh no longer than that, so a hit never looks at a clock.
    lapses_at: float = math.inf

    def __init__(self) -> None:
        self.token_hash = ""  # empty: not held by the cache
        self.fresh_until = 0.0
        self.usable_until = 0.0
        self.recent = False

    def copied(self) -> Self:
        """A twin of this entry with the same value, not held by the cache."""
        raise NotImplementedError
