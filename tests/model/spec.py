"""A small reference model of behaviour.md for the stateful test: records, requests, decisions, admin ops.

Pure: no I/O, no import of `validator`. Every admin input and every request the machine sends
is listed here with what docs/behaviour.md says about it, so the model never has to parse anything the
product parses: a table row names the stored form of an entry (None: refused) and the request
domain of a header value (None: none).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

LIMIT = 5

Restriction = Literal["domain", "ip"]
OpKind = Literal["add", "remove", "set", "clear", "enable", "disable", "mode", "delete", "put"]
# What an admin operation comes to: a change (`ok`, also when nothing needed changing), `noop`
# (a removal, clear, disable or mode change on a token without a record: nothing created), or
# one of the refusals, which change nothing.
Outcome = Literal["ok", "noop", "invalid", "limit", "uninitialised", "unavailable", "evicting"]


@dataclass(frozen=True)
class Record:
    """One token's stored restrictions, entries in canonical form (IP entries as networks)."""

    domain_enabled: bool = False
    ip_enabled: bool = False
    domains: frozenset[str] = frozenset()
    ips: frozenset[str] = frozenset()
    report: bool = False
    # Entries that expire: (entry, the instant it stops matching in ms since the epoch), on the
    # wall clock the validators read; an entry not named here is permanent. An entry matches
    # iff now < its instant. Redis keeps a lapsed entry (and counts it in the limit) until a
    # write sweeps it by the Redis server's clock.
    domain_expiry: frozenset[tuple[str, int]] = frozenset()
    ip_expiry: frozenset[tuple[str, int]] = frozenset()

    def describe(self) -> str:
        switches = f"D{'on' if self.domain_enabled else 'off'}/I{'on' if self.ip_enabled else 'off'}"
        mode = " report" if self.report else ""
        lists = f"d={_listed(self.domains, self.domain_expiry)} i={_listed(self.ips, self.ip_expiry)}"
        return f"{switches}{mode} {lists}"

    def pruned(self, now_ms: float) -> Record:
        """Without the entries that have lapsed at `now_ms` (an entry lapses when its instant <= now)."""
        if not (self.domain_expiry or self.ip_expiry):
            return self
        gone_d = {entry for entry, at in self.domain_expiry if at <= now_ms}
        gone_i = {entry for entry, at in self.ip_expiry if at <= now_ms}
        if not (gone_d or gone_i):
            return self
        return replace(
            self,
            domains=self.domains - gone_d,
            ips=self.ips - gone_i,
            domain_expiry=frozenset(p for p in self.domain_expiry if p[0] not in gone_d),
            ip_expiry=frozenset(p for p in self.ip_expiry if p[0] not in gone_i),
        )


def _listed(entries: frozenset[str], expiry: frozenset[tuple[str, int]]) -> str:
    until = dict(expiry)
    shown = (f"{e} until {clock_text(until[e])}" if e in until else e for e in sorted(entries))
    return "[" + ", ".join(shown) + "]"


def clock_text(ms: float) -> str:
    """A wall-clock instant for failure output: the seconds of the epoch modulo 1000, to the ms."""
    return f"{ms / 1000 % 1000:.3f}"


def pruned(state: State, now_ms: float) -> State:
    return None if state is None else state.pruned(now_ms)


State = Record | None


def describe(state: State) -> str:
    return "no record" if state is None else state.describe()


def is_token(token: str) -> bool:
    """docs/behaviour.md: tokens are visible ASCII (`!`..`~`)."""
    return bool(token) and all("!" <= c <= "~" for c in token)


# ---------------------------------------------------------------------------------- admin inputs

# What an admin types -> the stored entry (None: refused, with nothing changed).
DOMAIN_INPUTS: dict[str, str | None] = {
    "app.example.com": "app.example.com",
    "APP.example.COM": "app.example.com",
    "*.example.org": "*.example.org",
    "x.example.org": "x.example.org",
    "https://Shop.Example.com/path": "shop.example.com",  # a whole URL keeps its host alone
    # docs/behaviour.md, "Hardened rules": no wildcard directly over a public suffix, PSL private section too.
    "*.com": None,
    "*.co.uk": None,
    "*.github.io": None,
    "exa mple.com": None,
}
DOMAIN_VALID = [entry for entry, stored in DOMAIN_INPUTS.items() if stored is not None]
DOMAIN_HOSTILE = [entry for entry, stored in DOMAIN_INPUTS.items() if stored is None]

IP_INPUTS: dict[str, str | None] = {
    "203.0.113.7": "203.0.113.7/32",
    "198.51.100.0/24": "198.51.100.0/24",
    "2606:4700::1111": "2606:4700::1111/128",
    "2606:4700:0:0:0:0:0:1111": "2606:4700::1111/128",  # one address, one entry
    "2a00:1450:4001::/48": "2a00:1450:4001::/48",
    "8.8.8.8": "8.8.8.8/32",
    "1.1.1.0/24": "1.1.1.0/24",
    "10.0.0.7": None,  # private
    "0.0.0.0/0": None,
    "32.0.0.0/3": None,  # shorter than the minimum prefix (/16 for IPv4, /48 for IPv6)
    "128.0.0.0/3": None,
    "203.0.0.0/8": None,
    "2000::/3": None,
    "2001::/32": None,  # Teredo
    "2001:2::/48": None,  # benchmarking
    "2606:4700::1111%eth0": None,  # zone identifiers are refused
    "not-an-ip": None,
}
IP_VALID = [entry for entry, stored in IP_INPUTS.items() if stored is not None]
IP_HOSTILE = [entry for entry, stored in IP_INPUTS.items() if stored is None]
# Removal takes any form of a stored entry: a zone-id'd form removes the canonical address.
IP_REMOVALS: dict[str, str] = {
    **{entry: stored for entry, stored in IP_INPUTS.items() if stored is not None},
    "2606:4700::1111%eth0": "2606:4700::1111/128",
}

# -------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Front:
    """The browser part of a request: its Origin/Referer/Sec-Fetch headers and, per docs/behaviour.md,
    its request domain (None: a browser request without a domain, which matches nothing)."""

    name: str
    origin: str | None = None
    referer: str | None = None
    sec_fetch: bool = False
    domain: str | None = None
    # Header lists that only the middleware can be sent (ambiguous: refused with 403).
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def browser(self) -> bool:
        return bool(self.origin) or self.referer is not None or self.sec_fetch or bool(self.raw_headers)

    @property
    def ambiguous(self) -> bool:
        return bool(self.raw_headers)


FRONTS: list[Front] = [
    Front("server"),
    Front("empty-origin", origin=""),  # an empty Origin is no browser signal
    Front("app", origin="https://app.example.com", domain="app.example.com"),
    Front("app-case-port", origin="https://App.Example.COM:8443", domain="app.example.com"),
    Front("app-dot", origin="https://app.example.com.", domain="app.example.com"),
    Front("shop", origin="http://shop.example.com", domain="shop.example.com"),
    Front("x-org", origin="https://x.example.org", domain="x.example.org"),
    Front("deep-org", origin="https://a.b.example.org", domain="a.b.example.org"),
    Front("org-apex", origin="https://example.org", domain="example.org"),
    Front("evil", origin="https://evil.test", domain="evil.test"),
    Front("suffix-trick", origin="https://app.example.com.evil.test", domain="app.example.com.evil.test"),
    Front("userinfo", origin="https://app.example.com@evil.test", domain="evil.test"),
    Front("bad-scheme", origin="ht!tp://app.example.com"),  # not an origin: no domain
    Front("null-origin", origin="null"),
    Front("github-io", origin="https://someone.github.io", domain="someone.github.io"),
    Front("dot-com", origin="https://www.evil.com", domain="www.evil.com"),
    Front("co-uk", origin="https://news.bbc.co.uk", domain="news.bbc.co.uk"),
    Front("lookalike", origin="https://\u0430pp.example.com", domain="xn--pp-7ka.example.com"),
    Front("referer-app", referer="https://app.example.com/page?q=1", domain="app.example.com"),
    Front("referer-empty", referer=""),
    Front("sec-fetch", sec_fetch=True),
    Front("origin-wins", origin="https://evil.test", referer="https://app.example.com/", domain="evil.test"),
]
FRONT_BY_NAME = {front.name: front for front in FRONTS}

# Only through the middleware (headers that `Validator.check` has no way to receive).
MIDDLEWARE_FRONTS: list[Front] = [
    Front(
        "two-origins",
        raw_headers=((b"origin", b"https://app.example.com"), (b"origin", b"https://evil.test")),
    ),
    Front("origin-list", raw_headers=((b"origin", b"https://evil.test, https://app.example.com"),)),
]

CLIENT_IPS: list[str] = [
    "203.0.113.7",
    "::ffff:203.0.113.7",  # the same address, IPv4-mapped
    "203.0.113.8",
    "198.51.100.20",
    "2606:4700::1111",
    "2606:4700:0:0::1111",
    "2606:4700::2222",
    "2a00:1450:4001::5",
    "8.8.8.8",
    "1.1.1.1",
    "33.1.2.3",  # inside 32.0.0.0/3
    "130.1.2.3",  # inside 128.0.0.0/3
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, inside 2000::/3
    "2001:2::5",
    "10.0.0.7",
    "",
]


def domain_matches(entry: str, domain: str) -> bool:
    if entry.startswith("*."):
        return domain.endswith(entry[1:]) and domain != entry[2:]
    return domain == entry


def ip_listed(ips: Iterable[str], client_ip: str | None) -> bool:
    if not client_ip:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(entry) for entry in ips)


def allows(
    state: State, front: Front, client_ip: str | None, *, unknown_allowed: bool, now_ms: float
) -> bool:
    """docs/behaviour.md's decision table (report-only mode lets would-be denials through), at wall-clock
    instant `now_ms`: an entry that expires matches only before its instant."""
    if state is None:
        return unknown_allowed
    state = state.pruned(now_ms)
    if state.report:
        return True
    if front.browser:
        if not state.domain_enabled:
            return not state.ip_enabled
        return front.domain is not None and any(domain_matches(e, front.domain) for e in state.domains)
    if not state.ip_enabled:
        return not state.domain_enabled
    return ip_listed(state.ips, client_ip)


# ------------------------------------------------------------------------------------- admin ops


@dataclass(frozen=True, repr=False)
class Op:
    """One admin operation as the machine asks for it (entries as typed)."""

    kind: OpKind
    token: str
    restriction: Restriction | None = None
    entries: tuple[str, ...] = ()
    report: bool = False  # mode: report (True) or enforce
    put: tuple[bool, bool, tuple[str, ...], tuple[str, ...], bool] | None = None
    expires_at: int | None = None  # add, set: the entries' instant (ms since the epoch); None: permanent

    def __repr__(self) -> str:
        return f"Op({self.describe()})"

    def describe(self) -> str:
        parts = [self.kind, repr(self.token)]
        if self.restriction:
            parts.append(self.restriction)
        if self.kind == "mode":
            parts.append("report" if self.report else "enforce")
        parts.extend(repr(e) for e in self.entries)
        if self.put is not None:
            parts.append(repr(self.put))
        if self.expires_at is not None:
            parts.append(f"until {clock_text(self.expires_at)}")
        return " ".join(parts)


@dataclass
class Plan:
    """What docs/behaviour.md says an op does: the acceptable outcomes and the record after it."""

    outcomes: frozenset[Outcome]
    after: State
    notes: list[str] = field(default_factory=list)
    # When the outcome hangs on the server's clock (`plans`): the plan of each reading of it.
    alternatives: list[Plan] = field(default_factory=list)

    def after_for(self, agreed: frozenset[str]) -> State:
        """The record after the op, given the outcome the product agreed with."""
        for alternative in self.alternatives:
            if agreed <= alternative.outcomes:
                return alternative.after
        return self.after


def _canonical(restriction: Restriction, entries: Iterable[str], *, removal: bool) -> list[str] | None:
    table: dict[str, str | None]
    if restriction == "domain":
        table = dict(DOMAIN_INPUTS)
    else:
        table = dict(IP_REMOVALS) if removal else dict(IP_INPUTS)
    stored = [table.get(entry) for entry in entries]
    if any(s is None for s in stored):
        return None
    return [s for s in stored if s is not None]


def _with_list(
    record: Record, restriction: Restriction, entries: frozenset[str], expiry: frozenset[tuple[str, int]]
) -> Record:
    if restriction == "domain":
        return replace(record, domains=entries, domain_expiry=expiry)
    return replace(record, ips=entries, ip_expiry=expiry)


def _list_of(record: Record, restriction: Restriction) -> frozenset[str]:
    return record.domains if restriction == "domain" else record.ips


def _expiry_of(record: Record, restriction: Restriction) -> frozenset[tuple[str, int]]:
    return record.domain_expiry if restriction == "domain" else record.ip_expiry


def plan(op: Op, current: State, *, up: bool, marked: bool, redis_now_ms: float = -math.inf) -> Plan:
    """docs/behaviour.md's outcome of `op` on a token whose stored record is `current`, with the Redis
    server's clock at `redis_now_ms`: an expiry not after it is refused (nothing changed), and
    the entries lapsed by it are swept before the limit is checked. `after` keeps no lapsed entry."""
    refusals: set[Outcome] = set()
    if not is_token(op.token):
        refusals.add("invalid")
    if op.kind in ("add", "set") and op.expires_at is not None and op.expires_at <= redis_now_ms:
        refusals.add("invalid")  # an expiry that has passed: refused, nothing changed
    canonical: list[str] = []
    if op.kind in ("add", "remove", "set") and op.restriction is not None:
        found = _canonical(op.restriction, op.entries, removal=op.kind == "remove")
        if found is None or (op.kind != "set" and not op.entries):
            refusals.add("invalid")
        else:
            canonical = found
    put_record: Record | None = None
    if op.kind == "put" and op.put is not None:
        domain_on, ip_on, domains, ips, report = op.put
        found_d = _canonical("domain", domains, removal=False)
        found_i = _canonical("ip", ips, removal=False)
        if found_d is None or found_i is None:
            refusals.add("invalid")
        else:
            put_record = Record(domain_on, ip_on, frozenset(found_d), frozenset(found_i), report)
    if not up:
        refusals.add("unavailable")
    elif not marked:
        refusals.add("uninitialised")
    nothing_stored = current is None and op.kind in ("remove", "clear", "disable", "mode")
    if op.kind == "set" and current is None and not canonical:
        nothing_stored = True
    if refusals:
        if nothing_stored and refusals == {"uninitialised"}:
            # Both change nothing; which one a product checks first is its business.
            refusals.add("noop")
        return Plan(frozenset(refusals), current)
    if nothing_stored:
        return Plan(frozenset({"noop"}), None)
    # Every write first sweeps what has lapsed by the server's clock: it frees its slot.
    record = current.pruned(redis_now_ms) if current is not None else Record()
    match op.kind:
        case "add" | "set" | "clear":
            assert op.restriction is not None
            entries = frozenset(canonical)
            expiry = _expiry_of(record, op.restriction)
            if op.kind == "add":
                entries = _list_of(record, op.restriction) | entries
                # Adding an entry again sets its expiry anew; without one, makes it permanent.
                expiry = frozenset(p for p in expiry if p[0] not in canonical)
            else:
                expiry = frozenset()
            if op.expires_at is not None:
                expiry |= {(entry, op.expires_at) for entry in canonical}
            if len(entries) > LIMIT:
                return Plan(frozenset({"limit"}), current)
            return Plan(frozenset({"ok"}), _with_list(record, op.restriction, entries, expiry))
        case "remove":
            assert op.restriction is not None
            entries = _list_of(record, op.restriction) - frozenset(canonical)
            expiry = frozenset(p for p in _expiry_of(record, op.restriction) if p[0] in entries)
            return Plan(frozenset({"ok"}), _with_list(record, op.restriction, entries, expiry))
        case "enable" | "disable":
            on = op.kind == "enable"
            if op.restriction == "domain":
                return Plan(frozenset({"ok"}), replace(record, domain_enabled=on))
            return Plan(frozenset({"ok"}), replace(record, ip_enabled=on))
        case "mode":
            return Plan(frozenset({"ok"}), replace(record, report=op.report))
        case "delete":
            return Plan(frozenset({"ok"}), None)
        case "put":
            assert put_record is not None
            if len(put_record.domains) > LIMIT or len(put_record.ips) > LIMIT:
                return Plan(frozenset({"limit"}), current)
            return Plan(frozenset({"ok"}), put_record)
    raise AssertionError(f"unknown op {op.kind}")


def plans(op: Op, current: State, *, up: bool, marked: bool, redis_between: tuple[float, float]) -> Plan:
    """`plan` when the server's clock read by the write is somewhere in `redis_between` (the
    wall clock before and after the call): an entry or an expiry whose instant falls in that
    window may count either way, so either outcome is docs/behaviour.md's. `after` is that of the plan
    whose outcome the product gives (`Plan.after_for`)."""
    early = plan(op, current, up=up, marked=marked, redis_now_ms=redis_between[0])
    late = plan(op, current, up=up, marked=marked, redis_now_ms=redis_between[1])
    if early.outcomes == late.outcomes:
        return early
    return Plan(early.outcomes | late.outcomes, early.after, alternatives=[early, late])


def canonical_ip_entry(stored: str) -> str:
    """The model's form of an IP entry as the product stores it (`203.0.113.7` or `/32`)."""
    return ipaddress.ip_network(stored, strict=False).with_prefixlen
