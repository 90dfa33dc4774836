"""Entries that expire (issue 16, part 3), without Redis: how a record's expiry fields are read,
how compiled rules stop matching an entry at its instant (hot path, twin, stale path), and how
the admin API and command line refuse expiries that make no sense."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from validator import Admin, InvalidEntry, Restrictions, StoreUnavailable, Validator, model
from validator.admin.cli.output import _entries, duration, instant
from validator.cache import Cache
from validator.model import Mode, Reason
from validator.rules.decide import ExpiringRules, TokenRules, compile_rules
from validator.rules.explain import explain
from validator.store import UnreadableRecord
from validator.store.layout import _restrictions

pytestmark = [pytest.mark.promise("P-EXPIRY")]

AT = 1_900_000_000_000  # an instant in ms since the epoch (2030-03-17)
LATER = AT + 3_600_000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wall clock of the rules and the cache, in seconds since the epoch: set `clock[0]` to
    move time (a cache made in a test takes it as its monotonic clock too)."""
    now = [AT / 1000 - 60]
    monkeypatch.setattr(model, "wall_clock", lambda: now[0])
    return now


# ------------------------------------------------------------------------------ reading the record

META = ["d", "1", "i", "1", "v", "3"]

# name -> (extra meta fields, domains, ips, expected domain_expiry, expected ip_expiry)
READ_CASES: dict[str, tuple[list[str], list[str], list[str], dict[str, int], dict[str, int]]] = {
    "no expiry": ([], ["a.example"], ["203.0.113.7"], {}, {}),
    "a domain expires": (["x:d:a.example", str(AT)], ["a.example"], [], {"a.example": AT}, {}),
    "an IP expires": (["x:i:203.0.113.7", str(AT)], [], ["203.0.113.7"], {}, {"203.0.113.7": AT}),
    "IPv6 entry, colons in the field": (
        ["x:i:2001:db8::1", str(AT)],
        [],
        ["2001:db8::1"],
        {},
        {"2001:db8::1": AT},
    ),
    "qualified domain entry": (
        ["x:d:https://a.example:8443", str(AT)],
        ["https://a.example:8443"],
        [],
        {"https://a.example:8443": AT},
        {},
    ),
    "a field for an entry not in its set is ignored": (["x:d:gone.example", str(AT)], [], [], {}, {}),
    "a domain field does not name an IP entry": (
        ["x:d:203.0.113.7", str(AT)],
        [],
        ["203.0.113.7"],
        {},
        {},
    ),
}


@pytest.mark.parametrize("case", READ_CASES, ids=list(READ_CASES))
def test_expiry_fields_are_read_by_list(case: str) -> None:
    extra, domains, ips, domain_expiry, ip_expiry = READ_CASES[case]
    read = _restrictions([*META, *extra], domains, ips)
    assert (read.domain_expiry, read.ip_expiry) == (domain_expiry, ip_expiry)
    assert (read.domains, read.ips, read.version) == (sorted(domains), sorted(ips), 3)


# name -> extra meta fields of a record holding the domain a.example: none a validator may act on
UNREADABLE: dict[str, list[str]] = {
    "not a number": ["x:d:a.example", "soon"],
    "empty": ["x:d:a.example", ""],
    "negative": ["x:d:a.example", "-1"],
    "leading zero": ["x:d:a.example", "0123"],
    "a fraction": ["x:d:a.example", "1900000000000.5"],
    "too many digits": ["x:d:a.example", "1" * 16],
    "non-ASCII digits": ["x:d:a.example", "١٢٣"],
    "a field for no list": ["x:q:a.example", str(AT)],
    "a prefix without an entry": ["x:d:", str(AT)],
    "unknown field beside an expiry": ["x:d:a.example", str(AT), "zz", "1"],
}


@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
def test_an_expiry_that_cannot_be_read_makes_the_record_unreadable(case: str) -> None:
    # Read as permanent, an entry meant to lapse would allow past its instant: fail closed.
    with pytest.raises(UnreadableRecord):
        _restrictions([*META, *UNREADABLE[case]], ["a.example"], [])


# ------------------------------------------------------------------------------ active()

ACTIVE_CASES: dict[str, tuple[float, list[str], list[str]]] = {
    # name -> (now in seconds, domains kept, ips kept)
    "a minute before": (AT / 1000 - 60, ["a.example", "b.example"], ["203.0.113.7", "203.0.113.8"]),
    "a millisecond before": ((AT - 1) / 1000, ["a.example", "b.example"], ["203.0.113.7", "203.0.113.8"]),
    "at the instant": (AT / 1000, ["b.example"], ["203.0.113.8"]),
    "between the two": ((AT + 1) / 1000, ["b.example"], ["203.0.113.8"]),
    "after the later": (LATER / 1000, ["b.example"], []),
}


def _expiring() -> Restrictions:
    return Restrictions(
        domain_enabled=True,
        ip_enabled=True,
        domains=["a.example", "b.example"],
        ips=["203.0.113.7", "203.0.113.8"],
        domain_expiry={"a.example": AT},
        ip_expiry={"203.0.113.7": AT, "203.0.113.8": LATER},
        version=4,
    )


@pytest.mark.parametrize("case", ACTIVE_CASES, ids=list(ACTIVE_CASES))
def test_active_leaves_out_what_has_lapsed(case: str) -> None:
    now, domains, ips = ACTIVE_CASES[case]
    active = _expiring().active(now)
    assert (active.domains, active.ips, active.version) == (domains, ips, 4)
    assert set(active.domain_expiry) <= set(domains) and set(active.ip_expiry) <= set(ips)


def test_active_is_the_record_itself_when_nothing_lapsed() -> None:
    record = _expiring()
    assert record.active(AT / 1000 - 1) is record
    assert record.next_expiry == AT
    assert Restrictions().next_expiry is None


# ------------------------------------------------------------------------------ the hot path

# name -> (record, request as decide() takes it): the request matches the entry lapsing at AT
LAPSING: dict[str, tuple[Restrictions, tuple[str | None, str | None, bool, str | None]]] = {
    "exact domain (joined string)": (
        Restrictions(domain_enabled=True, domains=["a.example"], domain_expiry={"a.example": AT}),
        ("https://a.example", None, False, None),
    ),
    "wildcard domain (DomainSet)": (
        Restrictions(domain_enabled=True, domains=["*.a.example"], domain_expiry={"*.a.example": AT}),
        ("https://app.a.example", None, False, None),
    ),
    "exact IPv4 (joined string)": (
        Restrictions(ip_enabled=True, ips=["203.0.113.7"], ip_expiry={"203.0.113.7": AT}),
        (None, None, False, "203.0.113.7"),
    ),
    "IPv6 in another form": (
        Restrictions(ip_enabled=True, ips=["2001:db8::1"], ip_expiry={"2001:db8::1": AT}),
        (None, None, False, "2001:db8:0::1"),
    ),
    "network (IPSet)": (
        Restrictions(ip_enabled=True, ips=["203.0.113.0/24"], ip_expiry={"203.0.113.0/24": AT}),
        (None, None, False, "203.0.113.99"),
    ),
    "one of several, the others permanent": (
        Restrictions(
            ip_enabled=True,
            ips=["198.51.100.1", "203.0.113.7", "192.0.2.1"],
            ip_expiry={"203.0.113.7": AT},
        ),
        (None, None, False, "203.0.113.7"),
    ),
}

# seconds from the instant -> whether the entry still matches (the cache serves rules fresh until
# 1 ms before the instant)
MOMENTS = {-60.0: True, -0.01: True, -0.0005: False, 0.0: False, 0.001: False, 86_400.0: False}


async def _cached(rules: TokenRules, clock: list[float]) -> Cache[TokenRules]:
    cache: Cache[TokenRules] = Cache(clock=lambda: clock[0], ttl=3600)

    async def read() -> tuple[TokenRules, bool]:
        return rules, True

    await cache.load("tok", "hash", read)
    return cache


@pytest.mark.parametrize("case", LAPSING, ids=list(LAPSING))
async def test_the_hit_path_never_serves_a_lapsed_entry(case: str, clock: list[float]) -> None:
    # Fresh no longer than the next expiry: a hit decides with no clock, and never past it.
    record, request = LAPSING[case]
    rules = compile_rules(record)
    assert isinstance(rules, ExpiringRules)
    cache = await _cached(rules, clock)
    for offset, matches in MOMENTS.items():
        clock[0] = AT / 1000 + offset
        hit = cache.fresh("tok")
        assert (hit is not None and hit.decide(*request).allowed) is matches, offset


async def test_rules_without_expiring_entries_stay_fresh_their_ttl(clock: list[float]) -> None:
    cache = await _cached(compile_rules(Restrictions(ip_enabled=True, ips=["203.0.113.7"])), clock)
    clock[0] += 3599
    assert cache.fresh("tok") is not None


# seconds from the instant -> whether `current()` rules still match the entry
EXACT = {-60.0: True, -0.001: True, 0.0: False, 0.001: False, 86_400.0: False}


@pytest.mark.parametrize("case", LAPSING, ids=list(LAPSING))
def test_current_rules_never_match_a_lapsed_entry(case: str, clock: list[float]) -> None:
    # What a path serving the rules past their freshness decides with (stale, a racing read).
    record, request = LAPSING[case]
    rules = compile_rules(record)
    for offset, matches in EXACT.items():
        clock[0] = AT / 1000 + offset
        assert rules.current().decide(*request).allowed is matches, offset


@pytest.mark.parametrize("case", LAPSING, ids=list(LAPSING))
def test_a_lapsed_entry_never_matches_again_once_time_goes_back(case: str, clock: list[float]) -> None:
    # The rules recompiled themselves without it: a clock stepped back does not revive it.
    record, request = LAPSING[case]
    rules = compile_rules(record)
    clock[0] = AT / 1000
    assert not rules.current().decide(*request).allowed
    clock[0] = AT / 1000 - 60
    assert not rules.current().decide(*request).allowed
    assert not rules.decide(*request).allowed


def test_the_other_entries_keep_matching_after_a_lapse(clock: list[float]) -> None:
    record, _ = LAPSING["one of several, the others permanent"]
    rules = compile_rules(record)
    clock[0] = AT / 1000 + 1
    for address, allowed in (("198.51.100.1", True), ("192.0.2.1", True), ("203.0.113.7", False)):
        assert rules.current().decide(None, None, False, address).allowed is allowed
    assert isinstance(rules, ExpiringRules) and rules.lapses_at == float("inf")


def test_a_report_only_token_reports_a_lapsed_entry(clock: list[float]) -> None:
    record, request = LAPSING["exact IPv4 (joined string)"]
    rules = compile_rules(msgspec.structs.replace(record, mode=Mode.REPORT))
    assert rules.current().decide(*request).reason is Reason.IP_LISTED
    clock[0] = AT / 1000
    result = rules.current().decide(*request)
    assert (result.allowed, result.reported, result.reason) == (True, True, Reason.IP_NOT_LISTED)


def test_compiled_after_the_instant_the_entry_is_left_out_and_costs_nothing(clock: list[float]) -> None:
    record, request = LAPSING["exact IPv4 (joined string)"]
    clock[0] = AT / 1000 + 1
    rules = compile_rules(record)
    assert type(rules) is TokenRules  # nothing left to expire: no clock on its hot path
    assert not rules.decide(*request).allowed


def test_a_token_without_expiring_entries_is_plain_rules() -> None:
    assert type(compile_rules(Restrictions(ip_enabled=True, ips=["203.0.113.7"]))) is TokenRules


def test_a_twin_lapses_on_its_own(clock: list[float]) -> None:
    record, request = LAPSING["exact domain (joined string)"]
    rules = compile_rules(record)
    twin = rules.copied()
    assert isinstance(twin, ExpiringRules)
    clock[0] = AT / 1000
    assert not twin.current().decide(*request).allowed
    assert not rules.current().decide(*request).allowed


def test_explain_leaves_out_a_lapsed_entry(clock: list[float]) -> None:
    record, _ = LAPSING["exact IPv4 (joined string)"]
    assert explain(record, client_ip="203.0.113.7").allowed
    clock[0] = AT / 1000
    explained = explain(record, client_ip="203.0.113.7")
    assert not explained.allowed and explained.restrictions is not None
    assert explained.restrictions.ips == []


# ------------------------------------------------------------------------------ the validator


def _url() -> str:
    return f"memory://{uuid.uuid4().hex}"


async def test_the_cached_and_the_stale_path_drop_a_lapsed_entry(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _url()
    admin = Admin.from_url(url)
    at = datetime.fromtimestamp(AT / 1000, UTC)
    clock[0] = AT / 1000 - 60
    # The admin API checks instants against the real clock: AT is years ahead of it.
    await admin.add_ips("tok", ["203.0.113.7"], expires_at=at)
    await admin.add_ips("tok", ["198.51.100.1"])
    await admin.enable("tok", "ip")
    async with Validator.from_url(url) as validator:
        validator.cache._clock = lambda: clock[0]  # its monotonic clock moves with the wall clock
        assert (await validator.check("tok", client_ip="203.0.113.7")).allowed
        assert validator.check_cached("tok", client_ip="198.51.100.1") is not None
        # At the instant the cached rules are no longer fresh; the next read drops the entry.
        clock[0] = AT / 1000
        assert validator.check_cached("tok", client_ip="203.0.113.7") is None
        assert not (await validator.check("tok", client_ip="203.0.113.7")).allowed
        assert (await validator.check("tok", client_ip="198.51.100.1")).allowed
        assert validator.stats.misses == 2

        # Stale path: a second token cached before the instant, then the store fails.
        clock[0] = AT / 1000 - 60
        await admin.add_ips("tok2", ["203.0.113.7"], expires_at=at)
        await admin.enable("tok2", "ip")
        assert (await validator.check("tok2", client_ip="203.0.113.7")).allowed

        async def failing(*_: Any, **__: Any) -> None:
            raise StoreUnavailable("restriction store unavailable: test")

        monkeypatch.setattr(validator.store, "read", failing)
        validator.cache.expire_all()  # nothing fresh: the next check reads, fails, serves stale
        clock[0] = AT / 1000 + 1
        stale = await validator.check("tok2", client_ip="203.0.113.7")
        assert (stale.allowed, stale.reason) == (False, Reason.IP_NOT_LISTED)
        assert validator.stats.store_errors >= 1
    await admin.close()


# ------------------------------------------------------------------------------ admin input

# name -> keyword arguments of add_ips that are refused with one line, nothing written
REFUSED: dict[str, dict[str, Any]] = {
    "a past instant": {"expires_at": datetime(2001, 1, 1, tzinfo=UTC)},
    "now": {"expires_at": datetime.now(UTC) - timedelta(milliseconds=1)},
    "a naive datetime": {"expires_at": datetime(2099, 1, 1)},
    "a zero duration": {"expires_in": timedelta(0)},
    "a negative duration": {"expires_in": timedelta(hours=-2)},
    "beyond a hundred years": {"expires_in": timedelta(days=40_000)},
    "an instant beyond a hundred years": {"expires_at": datetime(9999, 1, 1, tzinfo=UTC)},
    "both": {"expires_at": datetime(2099, 1, 1, tzinfo=UTC), "expires_in": timedelta(hours=1)},
    "a number of seconds, not a timedelta": {"expires_in": 3600},
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
async def test_nonsense_expiries_are_refused_and_nothing_is_written(case: str) -> None:
    admin = Admin.from_url(_url())
    with pytest.raises(InvalidEntry) as refused:
        await admin.add_ips("tok", ["203.0.113.7"], **REFUSED[case])
    assert "\n" not in str(refused.value) and "nothing was changed" in str(refused.value)
    assert await admin.get("tok") is None
    await admin.close()


DURATIONS: dict[str, timedelta] = {
    "90s": timedelta(seconds=90),
    "30m": timedelta(minutes=30),
    "2h": timedelta(hours=2),
    "1h30m": timedelta(hours=1, minutes=30),
    "7d": timedelta(days=7),
    "2w": timedelta(weeks=2),
    " 2H ": timedelta(hours=2),
}
BAD_DURATIONS = ["", "0s", "0h0m", "2", "h", "-2h", "2x", "1.5h", "2h 30m", "30m2h", "1e3s"]


@pytest.mark.parametrize("text", DURATIONS)
def test_durations_read_by_for(text: str) -> None:
    assert duration(text) == DURATIONS[text]


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_durations_refused_by_for(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


INSTANTS: dict[str, datetime] = {
    "2026-12-31T18:00Z": datetime(2026, 12, 31, 18, 0, tzinfo=UTC),
    "2026-12-31T19:00+01:00": datetime(2026, 12, 31, 19, 0, tzinfo=timezone(timedelta(hours=1))),
    "2026-12-31T18:00:30.5+00:00": datetime(2026, 12, 31, 18, 0, 30, 500_000, tzinfo=UTC),
}
BAD_INSTANTS = ["2026-12-31T18:00", "2026-12-31", "tomorrow", "", "2026-13-01T00:00Z", "1798740000"]


@pytest.mark.parametrize("text", INSTANTS)
def test_instants_read_by_until(text: str) -> None:
    assert instant(text) == INSTANTS[text]


@pytest.mark.parametrize("text", BAD_INSTANTS)
def test_instants_refused_by_until(text: str) -> None:
    # Without a zone, the instant would depend on the machine the command runs on.
    with pytest.raises(argparse.ArgumentTypeError):
        instant(text)


REMAINING: dict[int, str] = {
    30_000: "30s",
    90_000: "1m",
    7_200_000: "2h",
    5_400_000: "1h 30m",
    90_000_000: "1d 1h",
    -5_000: "0s",
}


@pytest.mark.parametrize("left_ms", REMAINING)
def test_show_says_the_time_left(left_ms: int) -> None:
    shown = _entries(["a.example", "b.example"], {"a.example": AT + left_ms}, AT / 1000)
    assert shown == f"a.example ({REMAINING[left_ms]} left), b.example"
