"""Pure decision logic of docs/behaviour.md: classify a request, then apply the decision table."""

from __future__ import annotations

import math
from typing import Any, Self

from validator import model
from validator.model import Decision, Entry, Mode, Reason, Restrictions, Source, decision, reported
from validator.rules.domains import DomainSet
from validator.rules.ips import IPSet, ip_listed
from validator.rules.request import (
    _AF_INET,
    _MISSING,
    DOMAIN_SEP,
    HOST_KEYS,
    IP_SEP,
    _inet_pton,
    new_host_key,
)

__all__ = ["ExpiringRules", "ReportOnlyRules", "TokenRules", "classify", "compile_rules", "plain_rules"]

_FRONT = Source.FRONT_END
_BACK = Source.BACK_END

_UNRESTRICTED = {s: decision(True, Reason.UNRESTRICTED, s) for s in Source}
_DOMAIN_LISTED = decision(True, Reason.DOMAIN_LISTED, _FRONT)
_DOMAIN_NOT_LISTED = decision(False, Reason.DOMAIN_NOT_LISTED, _FRONT)
_NO_DOMAIN = decision(False, Reason.NO_DOMAIN, _FRONT)
_FRONT_END_NOT_ALLOWED = decision(False, Reason.FRONT_END_NOT_ALLOWED, _FRONT)
_IP_LISTED = decision(True, Reason.IP_LISTED, _BACK)
_IP_NOT_LISTED = decision(False, Reason.IP_NOT_LISTED, _BACK)
_NO_IP = decision(False, Reason.NO_IP, _BACK)
_BACK_END_NOT_ALLOWED = decision(False, Reason.BACK_END_NOT_ALLOWED, _BACK)
_UNKNOWN = {
    allowed: {s: decision(allowed, Reason.UNKNOWN_TOKEN, s) for s in Source} for allowed in (True, False)
}


def classify(origin: str | None, referer: str | None, sec_fetch: bool) -> Source:
    """Front end if the request carries a browser signal: a non-empty `Origin`, a `Referer`
    (even an empty one), or any `Sec-Fetch-*` header; back end otherwise."""
    return _FRONT if origin or referer is not None or sec_fetch else _BACK


class TokenRules(Entry):
    """One token's restrictions compiled for the hot path; `decide()` is the decision table.

    It is also the token's cache entry (`validator.model.Entry`), so that a cached token is one
    object: the decisions that need no list (`front`, `back`), the exact hosts and addresses as
    one string (`lists`: DOMAIN_SEP- then IP_SEP-joined), and the `DomainSet` and `IPSet` only
    when wildcard, qualified, network or IPv6 entries need more than that string. With 5 domains
    and 5 addresses a cached token took 1,384 bytes as an entry, rules, two sets and ten strings,
    and takes 619 so (benchmarks: memory); a listed host or address is one substring test.
    """

    __slots__ = ("back", "domain_set", "front", "ip_set", "lists")

    def __init__(
        self,
        restrictions: Restrictions | None,
        *,
        unknown_allowed: bool = True,
    ) -> None:
        super().__init__()
        # The decision for a front-end (back-end) request when it needs no list; None: the list decides.
        self.front: Decision | None
        self.back: Decision | None
        self.domain_set: DomainSet | None = None
        self.ip_set: IPSet | None = None
        if restrictions is None:
            unknown = _UNKNOWN[unknown_allowed]
            self.front, self.back, self.lists = unknown[_FRONT], unknown[_BACK], ""
            return
        r = restrictions
        if r.domain_enabled:
            self.front = None
        else:
            # D off: allowed only when nothing is enabled; "only IP enabled" denies browsers.
            self.front = _FRONT_END_NOT_ALLOWED if r.ip_enabled else _UNRESTRICTED[_FRONT]
        if r.ip_enabled:
            self.back = None
        else:
            self.back = _BACK_END_NOT_ALLOWED if r.domain_enabled else _UNRESTRICTED[_BACK]
        # The common record, bare hosts and IPv4 addresses only, is the joined string alone: built
        # directly it takes ~1.3 µs, through the two sets ~6 µs, a fifth of a miss (benchmarks: miss).
        lists = _plain_lists(r.domains, r.ips)
        if lists is not None:
            self.lists = lists
            return
        # Both lists are compiled even when off: an entry that does not parse makes the record
        # unreadable whether or not its list is on (`Validator._outcome`).
        domains = DomainSet(r.domains)
        ips = IPSet(r.ips)
        # A host key (DOMAIN_SEP-wrapped) can only match before the first IP_SEP, an address
        # key (IP_SEP-wrapped) only after the last DOMAIN_SEP: one string serves both lists.
        self.lists = domains.exact + ips.exact
        if domains.more:
            self.domain_set = domains
        if ips.networks:
            self.ip_set = ips

    @property
    def known(self) -> bool:
        """Whether the token has a stored record."""
        return self.front is not _UNKNOWN[True][_FRONT] and self.front is not _UNKNOWN[False][_FRONT]

    @property
    def value(self) -> TokenRules:
        """The cached value: the entry itself (see `validator.model.Entry`)."""
        return self

    def current(self) -> TokenRules:
        """These rules without the entries that have lapsed by now (`ExpiringRules`): itself."""
        return self

    def copied(self) -> Self:
        twin = object.__new__(type(self))
        Entry.__init__(twin)
        twin.front, twin.back, twin.lists = self.front, self.back, self.lists
        twin.domain_set, twin.ip_set = self.domain_set, self.ip_set
        return twin

    def decide(
        self,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
    ) -> Decision:
        """Apply docs/behaviour.md's decision table to one request. Never raises."""
        # classify(), inlined: this method is the hot path (benchmarks: hotpath).
        if origin or referer is not None or sec_fetch:
            if self.front is not None:
                return self.front
            url = origin or referer  # docs/behaviour.md: the host of Origin if present, else of Referer
            if not url:
                return _NO_DOMAIN
            # host_key(url), its memo read inline: a call less on every front-end check.
            key = HOST_KEYS.get(url, _MISSING)
            if key is _MISSING:
                key = new_host_key(url)
            if key is None:
                return _NO_DOMAIN
            if key in self.lists:
                return _DOMAIN_LISTED
            # Only a list holding a wildcard, or a scheme- or port-qualified entry, pays more.
            domains = self.domain_set
            if domains is not None and domains.matches(key[1:-1], url):
                return _DOMAIN_LISTED
            return _DOMAIN_NOT_LISTED
        if self.back is not None:
            return self.back
        if not client_ip:
            return _NO_IP
        if f"{IP_SEP}{client_ip}{IP_SEP}" in self.lists and IP_SEP not in client_ip:
            return _IP_LISTED
        if self.ip_set is None and ":" not in client_ip:
            # Exact IPv4 entries only, and text without ":" is an address only in canonical
            # dotted decimal (`ip_listed`): no parse, no memo.
            return _IP_NOT_LISTED
        return _IP_LISTED if ip_listed(self.lists, self.ip_set, client_ip) else _IP_NOT_LISTED


def _plain_lists(domains: list[str], ips: list[str]) -> str | None:
    """`TokenRules.lists` for lists of bare exact hosts and dotted-decimal IPv4 addresses only,
    exactly as `DomainSet(domains).exact + IPSet(ips).exact` makes it; None for anything else
    (a wildcard, a scheme, a port, a network, IPv6, a separator in an entry: the sets decide)."""
    hosts = DOMAIN_SEP.join(domains)
    if "*" in hosts or ":" in hosts or IP_SEP in hosts or hosts.count(DOMAIN_SEP) != max(len(domains) - 1, 0):
        return None
    addresses = IP_SEP.join(ips)
    if "/" in addresses or ":" in addresses or DOMAIN_SEP in addresses:
        return None
    try:
        for address in ips:
            _inet_pton(_AF_INET, address)  # exactly the canonical dotted decimal `IPSet` keeps as is
    except (OSError, ValueError):
        return None
    if len(set(domains)) != len(domains) or len(set(ips)) != len(ips):
        return None  # repeated entries (not from a Redis set): `joined` keeps one of each
    return (f"{DOMAIN_SEP}{hosts}{DOMAIN_SEP}" if domains else DOMAIN_SEP) + (
        f"{IP_SEP}{addresses}{IP_SEP}" if ips else IP_SEP
    )


class ReportOnlyRules(TokenRules):
    """A token in report-only mode: a would-be denial is let through, marked `reported`."""

    __slots__ = ()

    def decide(
        self,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
    ) -> Decision:
        result = super().decide(origin, referer, sec_fetch, client_ip)
        return result if result.allowed else reported(result)


class ExpiringRules(TokenRules):
    """A token with entries that expire. `lapses_at` is the next of their instants: the cache
    serves the rules fresh no longer than that, so the hit path decides as for any token, with
    no clock (benchmarks: hotpath, "expiring"). Any path that serves them past it (a read that
    raced the instant, a stale entry during an outage) calls `current()`, which recompiles them
    in place without the lapsed entries. So an entry stops matching at its instant with no Redis
    event and no sweep."""

    __slots__ = ("lapses_at", "record")

    def __init__(self, restrictions: Restrictions) -> None:
        super().__init__(restrictions)
        self.record = restrictions
        self.lapses_at = _lapses_at(restrictions)

    def copied(self) -> Self:
        twin = super().copied()
        twin.record, twin.lapses_at = self.record, self.lapses_at
        return twin

    def current(self) -> TokenRules:
        if model.wall_clock() >= self.lapses_at:
            self.lapse()
        return self

    def lapse(self) -> None:
        """Drop the entries that have lapsed by now."""
        active = self.record.active(model.wall_clock())
        fresh = TokenRules(active)
        self.front, self.back, self.lists = fresh.front, fresh.back, fresh.lists
        self.domain_set, self.ip_set = fresh.domain_set, fresh.ip_set
        self.record = active
        self.lapses_at = _lapses_at(active)


class ExpiringReportOnlyRules(ReportOnlyRules, ExpiringRules):
    """A token in report-only mode with entries that expire."""

    __slots__ = ()


def _lapses_at(restrictions: Restrictions) -> float:
    # Seconds since the epoch, computed as `Restrictions.active` compares: the same float.
    next_expiry = restrictions.next_expiry
    return math.inf if next_expiry is None else next_expiry / 1000


def compile_rules(restrictions: Restrictions, now: float | None = None) -> TokenRules:
    """The hot-path form of a stored record, without the entries lapsed at `now` (seconds since
    the epoch; default: `model.wall_clock()`). A subclass only for report-only tokens and for
    tokens with entries still to expire."""
    if restrictions.domain_expiry or restrictions.ip_expiry:
        active = restrictions.active(model.wall_clock() if now is None else now)
        if active.domain_expiry or active.ip_expiry:
            return (ExpiringReportOnlyRules if active.mode is Mode.REPORT else ExpiringRules)(active)
        restrictions = active
    if restrictions.mode is Mode.REPORT:
        return ReportOnlyRules(restrictions)
    return TokenRules(restrictions)


def plain_rules(
    domain_enabled: bool, ip_enabled: bool, report: bool, domains: list[Any], ips: list[Any]
) -> TokenRules | None:
    """`compile_rules` of a record with these switches and lists, no expiring entry, in report
    mode if `report`, for lists of bare exact hosts and dotted-decimal IPv4 addresses in ASCII
    only (the common record: `_plain_lists`); None for anything else, which `compile_rules`
    decides from the parsed record. The lists may be anything a store returned: what is not a
    list of text gives None too.

    A miss's read compiled without the `Restrictions` in between: the reply's lists straight to
    the joined string (benchmarks: miss), in the order given (`compile_rules` joins them sorted:
    each entry stands between its separators, so the order decides nothing)."""
    try:
        lists = _plain_lists(domains, ips)
    except TypeError:  # an entry that is not text
        return None
    if lists is None or not lists.isascii():
        return None
    rules = object.__new__(ReportOnlyRules if report else TokenRules)
    Entry.__init__(rules)
    if domain_enabled:
        rules.front = None
    else:
        rules.front = _FRONT_END_NOT_ALLOWED if ip_enabled else _UNRESTRICTED[_FRONT]
    if ip_enabled:
        rules.back = None
    else:
        rules.back = _BACK_END_NOT_ALLOWED if domain_enabled else _UNRESTRICTED[_BACK]
    rules.domain_set = None
    rules.ip_set = None
    rules.lists = lists
    return rules
