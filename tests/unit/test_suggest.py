"""`validator.admin.proposal.propose`: the allowlist learnt from a token's denial log, as tables.

Ranking by traffic (merged entries count for their repeats), the limit, what the admin-side rules
refuse (shown, never proposed), wildcards (never over a public suffix), the share still denied,
and entries the log holds in a form the writer never writes.
"""

from __future__ import annotations

import functools

import pytest

from validator.admin.proposal import Observation, Suggestion, propose
from validator.model import Mode, Restrictions
from validator.rules.decide import TokenRules
from validator.rules.networks import normalize_ip

pytestmark = [pytest.mark.promise("P-SUGGEST")]

Denial = dict[str, str]


def front(host: str, count: int = 1, *, at: int = 1_000_000, origin: str | None = None) -> Denial:
    """A front-end denial of the log, as the writer stores it (`count`/`first` only when merged)."""
    entry = {
        "at": str(at),
        "source": "front_end",
        "seen": host,
        "reason": "domain_not_listed",
        "mode": "report",
        "origin": f"https://{host}" if origin is None else origin,
    }
    if count > 1:
        entry |= {"count": str(count), "first": str(at - 1000)}
    return entry


def back(address: str, count: int = 1, *, at: int = 1_000_000) -> Denial:
    entry = {
        "at": str(at),
        "source": "back_end",
        "seen": address,
        "reason": "ip_not_listed",
        "mode": "report",
        "origin": "",
    }
    if count > 1:
        entry |= {"count": str(count), "first": str(at - 1000)}
    return entry


def suggest(
    denials: list[Denial], stored: Restrictions | None = None, *, limit: int = 5, allow_private: bool = False
) -> Suggestion:
    return propose(
        denials,
        stored,
        limit=limit,
        normalize_ip=functools.partial(normalize_ip, allow_private=allow_private),
        allow_private=allow_private,
    )


def statuses(s: Suggestion) -> dict[str, tuple[str, str | None]]:
    return {o.seen: (o.status, o.entry) for o in s.observations}


# ------------------------------------------------------------------------------ ranking and limit


@pytest.mark.parametrize(
    ("denials", "stored", "limit", "domains", "ips"),
    [
        pytest.param(
            [front("a.example.com", 5), front("b.example.net", 3), front("c.example.org")],
            None,
            2,
            ["a.example.com", "b.example.net"],
            [],
            id="by traffic, at most the limit",
        ),
        pytest.param(
            [front("once.example.net"), front("once.example.net"), front("merged.example.com", 10)],
            None,
            1,
            ["merged.example.com"],
            [],
            id="a merged entry counts for its repeats",
        ),
        pytest.param(
            [front("old.example.net", at=1_000), front("new.example.com", at=2_000)],
            None,
            1,
            ["new.example.com"],
            [],
            id="equal traffic: the most recent first",
        ),
        pytest.param(
            [front("a.example.com", 5), front("b.example.net", 3)],
            Restrictions(domains=["kept.example.org"]),
            2,
            ["kept.example.org", "a.example.com"],
            [],
            id="stored entries are kept and take room first",
        ),
        pytest.param(
            [back("203.0.113.7", 4), back("::ffff:203.0.113.7", 2), back("198.51.100.9", 5)],
            None,
            1,
            [],
            ["203.0.113.7"],
            id="two spellings of one address are one entry, their traffic summed",
        ),
        pytest.param(
            [back("2001:db8:0:0::1", 2), back("2001:db8::1", 1)],
            None,
            5,
            [],
            ["2001:db8::1"],
            id="IPv6 stored canonical",
        ),
        pytest.param(
            [front("app.example.com", 2), back("203.0.113.7", 3)],
            None,
            5,
            ["app.example.com"],
            ["203.0.113.7"],
            id="front end proposes domains, back end addresses",
        ),
        pytest.param(
            [front("App.Example.com.", 2)],
            None,
            5,
            ["app.example.com"],
            [],
            id="a host normalised as the admin side stores it",
        ),
    ],
)
def test_proposal(
    denials: list[Denial], stored: Restrictions | None, limit: int, domains: list[str], ips: list[str]
) -> None:
    s = suggest(denials, stored, limit=limit)
    assert s.domains.entries == domains
    assert s.ips.entries == ips


def test_what_does_not_fit_is_shown_over_the_limit() -> None:
    s = suggest([front("a.example.com", 5), front("b.example.net", 3), front("c.example.org")], limit=2)
    assert statuses(s)["c.example.org"] == ("over_limit", "c.example.org")
    assert "at most 2 entries" in next(o.why for o in s.observations if o.seen == "c.example.org")


def test_observations_carry_counts_and_times_ranked_by_traffic() -> None:
    s = suggest(
        [
            front("a.example.com", at=5_000),
            front("b.example.com", 3, at=9_000),
            front("a.example.com", at=7_000),
        ]
    )
    assert [(o.seen, o.count, o.first_ms, o.last_ms) for o in s.observations] == [
        ("b.example.com", 3, 8_000, 9_000),
        ("a.example.com", 2, 5_000, 7_000),
    ]


# ------------------------------------------------------------------------------ what the rules make of it


@pytest.mark.parametrize(
    ("denial", "why"),
    [
        pytest.param(back("10.0.0.7"), "private (RFC 1918)", id="private address"),
        pytest.param(back("127.0.0.1"), "loopback", id="loopback"),
        pytest.param(back("169.254.1.1"), "link-local", id="link-local"),
        pytest.param(back("240.0.0.1"), "reserved", id="reserved"),
        pytest.param(back("2001::1"), "Teredo", id="Teredo"),
        pytest.param(back("-"), "no client address", id="no address"),
        pytest.param(back("not-an-ip"), "not an IP address", id="garbage address"),
        pytest.param(front("github.io"), "public suffix", id="public suffix host"),
        pytest.param(front("co.uk"), "public suffix", id="public suffix, ICANN section"),
        pytest.param(
            front("203.0.113.5", origin="http://203.0.113.5"),
            "is an IP address, not a domain",
            id="IP as origin",
        ),
        pytest.param(front("-", origin=""), "no domain could be read", id="Origin null"),
        pytest.param(front("bad host!", origin=""), "not a hostname", id="not a hostname"),
        pytest.param(
            {"at": "1", "source": "-", "seen": "-", "reason": "unknown_token"},
            "neither a front-end nor a back-end",
            id="no source",
        ),
    ],
)
def test_refused_sources_are_shown_with_why_never_proposed(denial: Denial, why: str) -> None:
    s = suggest([denial, back("203.0.113.7")])
    refused = [o for o in s.observations if o.status == "refused"]
    assert len(refused) == 1
    assert why in refused[0].why
    assert refused[0].entry is None
    assert s.domains.added == [] and s.ips.added == ["203.0.113.7"]
    assert s.still_denied == 1 and s.denials == 2


def test_allow_private_proposes_private_addresses() -> None:
    s = suggest([back("10.0.0.7", 3)], allow_private=True)
    assert s.ips.entries == ["10.0.0.7"]
    assert s.record(enforce=True).ips == ["10.0.0.7"]
    assert s.allow_private


@pytest.mark.parametrize(
    ("stored", "denial", "listed_by"),
    [
        pytest.param(
            Restrictions(domains=["app.example.com"]), front("app.example.com"), "app.example.com", id="exact"
        ),
        pytest.param(
            Restrictions(domains=["*.example.com"]), front("a.b.example.com"), "*.example.com", id="wildcard"
        ),
        pytest.param(
            Restrictions(domains=["https://app.example.com"]),
            front("app.example.com", origin="https://app.example.com"),
            "https://app.example.com",
            id="qualified, same origin",
        ),
        pytest.param(
            Restrictions(ips=["203.0.113.0/24"]), back("203.0.113.9"), "203.0.113.0/24", id="network"
        ),
        pytest.param(
            Restrictions(ips=["203.0.113.7"]), back("::ffff:203.0.113.7"), "203.0.113.7", id="mapped"
        ),
    ],
)
def test_what_stored_entries_allow_is_counted_under_them(
    stored: Restrictions, denial: Denial, listed_by: str
) -> None:
    s = suggest([denial, denial], stored)
    assert [(o.status, o.entry, o.count) for o in s.observations] == [("listed", listed_by, 2)]
    assert s.domains.added == [] and s.ips.added == []
    assert s.still_denied == 0


@pytest.mark.parametrize(
    ("stored", "denial"),
    [
        pytest.param(
            Restrictions(domains=["https://app.example.com"]),
            front("app.example.com", origin="http://app.example.com"),
            id="qualified, another scheme",
        ),
        pytest.param(Restrictions(domains=["*.example.com"]), front("example.com"), id="wildcard, apex"),
        pytest.param(Restrictions(domains=["example.com"]), front("example.com.evil.test"), id="look-alike"),
    ],
)
def test_what_stored_entries_do_not_allow_is_proposed(stored: Restrictions, denial: Denial) -> None:
    s = suggest([denial], stored)
    assert [o.status for o in s.observations] == ["proposed"]
    assert s.domains.added == [denial["seen"]]


# ------------------------------------------------------------------------------ wildcards


def hosts(*names: str) -> list[Denial]:
    return [front(name) for name in names]


@pytest.mark.parametrize(
    ("denials", "limit", "domains", "considered"),
    [
        pytest.param(
            hosts(*(f"s{n}.example.com" for n in range(6))),
            5,
            ["*.example.com"],
            [("*.example.com", True)],
            id="more subdomains than the limit: one wildcard",
        ),
        pytest.param(
            hosts(
                "a.shop.example.com",
                "b.shop.example.com",
                "one.example.net",
                "two.example.org",
                "x.example.edu",
            ),
            4,
            ["*.shop.example.com", "one.example.net", "two.example.org", "x.example.edu"],
            [("*.shop.example.com", True)],
            id="the narrowest wildcard over them",
        ),
        pytest.param(
            hosts("example.com", *(f"s{n}.example.com" for n in range(5))),
            2,
            ["*.example.com", "example.com"],
            [("*.example.com", True)],
            id="the apex stays an entry of its own",
        ),
        pytest.param(
            hosts("a.example.com", "b.example.com"),
            5,
            ["a.example.com", "b.example.com"],
            [],
            id="within the limit: no wildcard",
        ),
        pytest.param(
            hosts("a.github.io", "b.github.io", "c.github.io"),
            2,
            ["a.github.io", "b.github.io"],
            [("*.github.io", False)],
            id="never over a public suffix (private section)",
        ),
        pytest.param(
            hosts("a.co.uk", "b.co.uk", "c.co.uk"),
            2,
            ["a.co.uk", "b.co.uk"],
            [("*.co.uk", False)],
            id="never over a public suffix (ICANN section)",
        ),
        pytest.param(
            hosts("x.a.github.io", "y.a.github.io", "b.github.io"),
            1,
            ["*.a.github.io"],
            [("*.a.github.io", True)],
            id="below a public suffix, over a site: fine",
        ),
    ],
)
def test_wildcards(
    denials: list[Denial], limit: int, domains: list[str], considered: list[tuple[str, bool]]
) -> None:
    s = suggest(denials, limit=limit)
    assert sorted(s.domains.entries) == sorted(domains)
    assert [(w.entry, w.proposed) for w in s.wildcards] == considered
    for wildcard in s.wildcards:
        assert wildcard.why
        if not wildcard.proposed:
            assert wildcard.entry not in s.domains.entries
            assert "public suffix" in wildcard.why


def test_a_wildcard_says_what_it_admits() -> None:
    s = suggest(hosts(*(f"s{n}.example.com" for n in range(3))), limit=2)
    (wildcard,) = s.wildcards
    assert wildcard.hosts == ["s0.example.com", "s1.example.com", "s2.example.com"]
    assert "also allows any other subdomain of example.com" in wildcard.why
    assert {o.entry for o in s.observations} == {"*.example.com"}


def test_no_wildcard_when_the_stored_list_is_full() -> None:
    s = suggest(hosts("a.example.com", "b.example.com"), Restrictions(domains=["x.example.net"]), limit=1)
    assert s.wildcards == []
    assert s.domains.entries == ["x.example.net"]
    assert {o.status for o in s.observations} == {"over_limit"}


# ------------------------------------------------------------------------------ the cost


@pytest.mark.parametrize(
    ("denials", "limit", "shares"),
    [
        pytest.param(
            [front("a.example.com", 6), front("b.example.org", 3), front("c.example.net", 1)],
            2,
            (1 / 10, 0.0, 1 / 10),
            id="the least seen over the limit",
        ),
        pytest.param(
            [front("a.example.com", 3), back("10.0.0.1", 1), back("203.0.113.7", 4)],
            5,
            (0.0, 1 / 5, 1 / 8),
            id="a private address stays denied",
        ),
        pytest.param([back("203.0.113.7")], 5, (0.0, 0.0, 0.0), id="nothing of a kind seen: 0"),
    ],
)
def test_share_still_denied(denials: list[Denial], limit: int, shares: tuple[float, float, float]) -> None:
    s = suggest(denials, limit=limit)
    assert (s.domains.share_denied, s.ips.share_denied, s.share_denied) == pytest.approx(shares)
    assert s.denials == sum(int(d.get("count", 1)) for d in denials)


# ------------------------------------------------------------------------------ the record written


@pytest.mark.parametrize(
    ("stored", "denials", "enforce", "switches", "mode"),
    [
        pytest.param(
            Restrictions(domain_enabled=True, ip_enabled=True, mode=Mode.REPORT),
            [front("a.example.com")],
            True,
            (True, True),
            Mode.ENFORCE,
            id="a restriction on stays on (its empty list denies)",
        ),
        pytest.param(
            Restrictions(domain_enabled=True, mode=Mode.REPORT),
            [front("a.example.com"), back("203.0.113.7")],
            True,
            (True, True),
            Mode.ENFORCE,
            id="a list that allows traffic seen is switched on",
        ),
        pytest.param(
            Restrictions(domain_enabled=True, mode=Mode.REPORT),
            [front("a.example.com"), back("10.0.0.1")],
            True,
            (True, False),
            Mode.ENFORCE,
            id="a list that allows nothing seen stays off",
        ),
        pytest.param(
            Restrictions(domain_enabled=True, mode=Mode.REPORT),
            [front("a.example.com"), back("203.0.113.7")],
            False,
            (True, False),
            Mode.REPORT,
            id="apply alone changes the lists only",
        ),
        pytest.param(
            Restrictions(ip_enabled=True, domains=["kept.example.com"]),
            [front("kept.example.com")],
            True,
            (True, True),
            Mode.ENFORCE,
            id="a stored list that allows traffic seen is switched on",
        ),
    ],
)
def test_record(
    stored: Restrictions, denials: list[Denial], enforce: bool, switches: tuple[bool, bool], mode: Mode
) -> None:
    s = suggest(denials, stored)
    record = s.record(enforce=enforce)
    assert (record.domain_enabled, record.ip_enabled) == switches
    assert record.mode is mode
    assert (record.domains, record.ips) == (s.domains.entries, s.ips.entries)


def test_report_only_is_told() -> None:
    assert suggest([], Restrictions(mode=Mode.REPORT)).report_only
    assert not suggest([], Restrictions()).report_only
    assert not suggest([], None).report_only


# ------------------------------------------------------------------------------ what the log may hold


@pytest.mark.parametrize(
    ("entry", "count", "first", "last"),
    [
        pytest.param({}, 1, 0, 0, id="nothing at all"),
        pytest.param({"source": "front_end", "seen": "a.example.com"}, 1, 0, 0, id="no time"),
        pytest.param(
            {"source": "back_end", "seen": "203.0.113.7", "at": "x"}, 1, 0, 0, id="time not a number"
        ),
        pytest.param(
            {"source": "back_end", "seen": "203.0.113.7", "at": "5", "count": "0"}, 1, 5, 5, id="count 0"
        ),
        pytest.param(
            {"source": "back_end", "seen": "203.0.113.7", "at": "5", "count": "-3"}, 1, 5, 5, id="negative"
        ),
        pytest.param(
            {"source": "back_end", "seen": "203.0.113.7", "at": "5", "count": "lots"}, 1, 5, 5, id="garbage"
        ),
        pytest.param(
            {"source": "back_end", "seen": "203.0.113.7", "at": "5", "first": "9"},
            1,
            5,
            5,
            id="first after at",
        ),
        pytest.param({"source": "back_end", "seen": "203.0.113.7", "at": "-5"}, 1, 0, 0, id="negative time"),
        pytest.param({"source": "other", "seen": "x", "at": "5"}, 1, 5, 5, id="unknown source"),
    ],
)
def test_malformed_entries_count_for_one_and_never_crash(
    entry: Denial, count: int, first: int, last: int
) -> None:
    s = suggest([entry])
    (observation,) = s.observations
    assert (observation.count, observation.first_ms, observation.last_ms) == (count, first, last)
    assert s.entries_read == 1


def test_nothing_recorded_proposes_nothing() -> None:
    stored = Restrictions(domain_enabled=True, domains=["a.example.com"])
    s = suggest([], stored)
    assert (s.entries_read, s.denials, s.share_denied, s.observations) == (0, 0, 0.0, [])
    assert s.domains.entries == ["a.example.com"] and s.domains.added == []


# ------------------------------------------------------------------------------ the truth a validator acts on


SCENARIOS = {
    "sites and servers over the limit": (
        [front(f"s{n}.example-{n}.com", 10 - n) for n in range(7)]
        + [back(f"203.0.113.{n}", n) for n in range(1, 8)]
        + [back("10.0.0.1", 3), front("-", origin="")],
        Restrictions(domain_enabled=True, ip_enabled=True, mode=Mode.REPORT),
    ),
    "a wildcard and stored entries": (
        [front(f"t{n}.shop.example.com", 2) for n in range(6)]
        + [front("app.example.net", origin="http://app.example.net:8080"), front("github.io")]
        + [back("198.51.100.9"), back("::ffff:198.51.100.9"), back("2001:db8::1")],
        Restrictions(
            domain_enabled=True, domains=["https://app.example.net", "*.example.org"], ips=["2001:db8::/48"]
        ),
    ),
    "only front-end traffic, IP restriction off": (
        [front("a.example.com", 4), front("b.example.com", 1), back("192.168.1.1", 2)],
        Restrictions(domain_enabled=True),
    ),
    "a private server allowed on purpose": (
        [back("10.0.0.1", 2), back("203.0.113.7"), front("www.example.com")],
        Restrictions(ip_enabled=True),
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_what_it_says_is_allowed_is_what_a_validator_allows_once_enforced(name: str) -> None:
    """Each observation, decided by the request-time rules against the record --enforce writes:
    allowed exactly when the proposal says `listed` or `proposed`, so the share it reports is
    the share a validator would deny."""
    denials, stored = SCENARIOS[name]
    s = suggest(denials, stored, allow_private=name.startswith("a private"))
    rules = TokenRules(s.record(enforce=True))
    by_seen: dict[tuple[str, str], Observation] = {(o.kind, o.seen): o for o in s.observations}
    denied = 0
    for denial in denials:
        kind = "domain" if denial["source"] == "front_end" else "ip"
        observation = by_seen[(kind, denial["seen"])]
        if kind == "domain":
            decision = rules.decide(denial["origin"] or "null", None, False, None)
        else:
            decision = rules.decide(None, None, False, denial["seen"])
        assert decision.allowed is (observation.status in ("listed", "proposed")), (denial, observation)
        denied += 0 if decision.allowed else int(denial.get("count", 1))
    assert denied == s.still_denied


# ------------------------------------------------------------------------------ floods (issue 23, hole 6)


def pair(client: str, host: str, count: int = 1, *, at: int = 1_000_000) -> Denial:
    """A pair of the token's summary: a front-end denial with its client address."""
    return front(host, count, at=at) | {"client": client, "count": str(count), "first": str(at)}


def from_summary(pairs: list[Denial], let_go: dict[str, int] | None = None, *, limit: int = 5) -> Suggestion:
    return propose(
        [],
        None,
        limit=limit,
        normalize_ip=functools.partial(normalize_ip, allow_private=False),
        summary=pairs,
        let_go=let_go,
    )


@pytest.mark.promise("P-SUGGEST-FLOOD-RESISTANT")
def test_what_only_a_flooding_client_sent_is_refused_and_said() -> None:
    legitimate = [pair("198.51.100.1", "app.example.com"), pair("198.51.100.2", "app.example.com")]
    flood = [pair("192.0.2.66", f"x{n}.attacker.example.net", 3, at=2_000_000) for n in range(30)]
    s = from_summary([*legitimate, *flood], {"192.0.2.66": 500})
    assert s.domains.added == ["app.example.com"]
    assert s.wildcards == []
    assert [(f.client, f.values, f.requests) for f in s.floods] == [("192.0.2.66", 530, 90)]
    refused = [o for o in s.observations if o.seen.endswith("attacker.example.net")]
    assert len(refused) == 30 and all(o.status == "refused" and "a flood?" in o.why for o in refused)
    (app,) = [o for o in s.observations if o.seen == "app.example.com"]
    assert (app.clients, app.weight, app.count) == (2, 2.0, 2)


@pytest.mark.promise("P-SUGGEST-FLOOD-RESISTANT")
def test_a_client_spraying_values_weighs_as_one_client() -> None:
    """Under the flood threshold: 10 values from one client, each with more requests, weigh 1/10
    each and rank below a site one browser used once; a value seen from the sprayer and others
    keeps the others' weight."""
    spray = [pair("192.0.2.66", f"s{n}.example{n}.net", 50, at=2_000_000) for n in range(10)]
    legitimate = [pair("198.51.100.1", "app.example.com"), pair("198.51.100.3", "s0.example0.net")]
    s = from_summary([*spray, *legitimate], limit=2)
    assert s.floods == []
    assert s.domains.added == ["s0.example0.net", "app.example.com"]
    (app,) = [o for o in s.observations if o.seen == "app.example.com"]
    assert (app.weight, app.status) == (1.0, "proposed")
    assert {o.status for o in s.observations if o.seen.startswith("s") and o.seen != "s0.example0.net"} == {
        "over_limit"
    }


def test_without_client_addresses_the_ranking_is_by_requests_as_before() -> None:
    """Stream entries name no client (a log from before summaries, the unknown-token log): every
    front-end value shares one unknown client, never taken for a flood, so requests decide."""
    s = suggest([front(f"site{n}.example{n}.org", 30 - n) for n in range(25)])
    assert s.floods == []
    assert s.domains.added == [f"site{n}.example{n}.org" for n in range(5)]
