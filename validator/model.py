"""Plain records shared by every layer: the stored restrictions and the decision."""

from __future__ import annotations

import enum

import msgspec

__all__ = ["Decision", "Reason", "Restrictions", "Source"]


class Source(enum.Enum):
    """How a request was classified (SPEC.md, "The decision")."""

    FRONT_END = "front_end"
    BACK_END = "back_end"


class Reason(enum.Enum):
    """Which rule decided. Never sent to the client; for logs, metrics and `explain`."""

    UNRESTRICTED = "unrestricted"
    UNKNOWN_TOKEN = "unknown_token"
    DOMAIN_LISTED = "domain_listed"
    DOMAIN_NOT_LISTED = "domain_not_listed"
    NO_DOMAIN = "no_domain"
    FRONT_END_NOT_ALLOWED = "front_end_not_allowed"
    IP_LISTED = "ip_listed"
    IP_NOT_LISTED = "ip_not_listed"
    NO_IP = "no_ip"
    BACK_END_NOT_ALLOWED = "back_end_not_allowed"
    STORE_UNAVAILABLE = "store_unavailable"


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one check.

    Decisions are shared constants (see `decision()`), so the hot path allocates nothing.
    """

    allowed: bool
    reason: Reason
    source: Source | None = None


def _all_decisions() -> dict[tuple[bool, Reason, Source | None], Decision]:
    sources: tuple[Source | None, ...] = (None, *Source)
    return {
        (allowed, reason, source): Decision(allowed, reason, source)
        for allowed in (True, False)
        for reason in Reason
        for source in sources
    }


_DECISIONS = _all_decisions()


def decision(allowed: bool, reason: Reason, source: Source | None = None) -> Decision:
    """The shared `Decision` constant for these values."""
    return _DECISIONS[allowed, reason, source]


class Restrictions(msgspec.Struct, kw_only=True):
    """One token's stored restrictions, as the admin sees them.

    `domains` and `ips` hold normalised entries (see `validator.matching`). `version` grows by
    one with every write, so two reads can tell whether anything changed in between.
    """

    domain_enabled: bool = False
    ip_enabled: bool = False
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)
    version: int = 0
