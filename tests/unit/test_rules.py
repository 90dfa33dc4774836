"""docs/behaviour.md's decision table, row by row, and the classification of requests."""

from __future__ import annotations

import pytest

from validator.model import Reason, Restrictions, Source
from validator.rules.decide import TokenRules, classify

LISTED_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.test"
LISTED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"


def rules(d: bool, i: bool, *, domains: list[str] | None = None, ips: list[str] | None = None) -> TokenRules:
    return TokenRules(
        Restrictions(
            domain_enabled=d,
            ip_enabled=i,
            domains=["app.example.com"] if domains is None else domains,
            ips=[LISTED_IP] if ips is None else ips,
        )
    )


# (D, I, request, expected allowed, expected reason)
# request: ("front", origin) or ("back", client_ip); `empty` rows use empty lists.
TABLE = [
    pytest.param(False, False, "front", OTHER_ORIGIN, True, Reason.UNRESTRICTED, id="off-off front allowed"),
    pytest.param(False, False, "back", OTHER_IP, True, Reason.UNRESTRICTED, id="off-off back allowed"),
    pytest.param(True, False, "front", LISTED_ORIGIN, True, Reason.DOMAIN_LISTED, id="D front listed"),
    pytest.param(
        True, False, "front", OTHER_ORIGIN, False, Reason.DOMAIN_NOT_LISTED, id="D front not listed"
    ),
    pytest.param(True, False, "back", LISTED_IP, False, Reason.BACK_END_NOT_ALLOWED, id="D back denied"),
    pytest.param(
        False, True, "front", LISTED_ORIGIN, False, Reason.FRONT_END_NOT_ALLOWED, id="I front denied"
    ),
    pytest.param(False, True, "back", LISTED_IP, True, Reason.IP_LISTED, id="I back listed"),
    pytest.param(False, True, "back", OTHER_IP, False, Reason.IP_NOT_LISTED, id="I back not listed"),
    pytest.param(True, True, "front", LISTED_ORIGIN, True, Reason.DOMAIN_LISTED, id="DI front listed"),
    pytest.param(
        True, True, "front", OTHER_ORIGIN, False, Reason.DOMAIN_NOT_LISTED, id="DI front not listed"
    ),
    pytest.param(True, True, "back", LISTED_IP, True, Reason.IP_LISTED, id="DI back listed"),
    pytest.param(True, True, "back", OTHER_IP, False, Reason.IP_NOT_LISTED, id="DI back not listed"),
]


@pytest.mark.promise("P-DECISION-TABLE")
@pytest.mark.parametrize(("d", "i", "kind", "value", "allowed", "reason"), TABLE)
def test_decision_table(d: bool, i: bool, kind: str, value: str, allowed: bool, reason: Reason) -> None:
    r = rules(d, i)
    if kind == "front":
        decision = r.decide(value, None, False, LISTED_IP)
        assert decision.source is Source.FRONT_END
    else:
        decision = r.decide(None, None, False, value)
        assert decision.source is Source.BACK_END
    assert (decision.allowed, decision.reason) == (allowed, reason)


EMPTY_LISTS = [
    # An enabled restriction with an empty list denies every request of its kind.
    pytest.param(True, False, "front", LISTED_ORIGIN, Reason.DOMAIN_NOT_LISTED, id="D empty front"),
    pytest.param(False, True, "back", LISTED_IP, Reason.IP_NOT_LISTED, id="I empty back"),
    pytest.param(True, True, "front", LISTED_ORIGIN, Reason.DOMAIN_NOT_LISTED, id="DI empty front"),
    pytest.param(True, True, "back", LISTED_IP, Reason.IP_NOT_LISTED, id="DI empty back"),
]


@pytest.mark.promise("P-EMPTY-LIST-DENIES")
@pytest.mark.parametrize(("d", "i", "kind", "value", "reason"), EMPTY_LISTS)
def test_enabled_empty_list_denies_its_kind(d: bool, i: bool, kind: str, value: str, reason: Reason) -> None:
    r = rules(d, i, domains=[], ips=[])
    decision = r.decide(value, None, False, None) if kind == "front" else r.decide(None, None, False, value)
    assert not decision.allowed
    assert decision.reason is reason


@pytest.mark.promise("P-FRONT-OR-BACK-END")
@pytest.mark.parametrize(
    ("origin", "referer", "sec_fetch", "source"),
    [
        pytest.param(None, None, False, Source.BACK_END, id="nothing"),
        pytest.param("", None, False, Source.BACK_END, id="empty origin is no signal"),
        pytest.param("https://a.test", None, False, Source.FRONT_END, id="origin"),
        pytest.param("null", None, False, Source.FRONT_END, id="origin null"),
        pytest.param(None, "https://a.test/x", False, Source.FRONT_END, id="referer"),
        pytest.param(None, "", False, Source.FRONT_END, id="empty referer header"),
        pytest.param(None, None, True, Source.FRONT_END, id="sec-fetch only"),
    ],
)
def test_classify(origin: str | None, referer: str | None, sec_fetch: bool, source: Source) -> None:
    assert classify(origin, referer, sec_fetch) is source


@pytest.mark.promise("P-MISSING-SOURCE-DENIED")
@pytest.mark.parametrize(
    ("origin", "referer", "sec_fetch"),
    [
        pytest.param("null", None, False, id="origin null"),
        pytest.param(
            "null", "https://app.example.com/page", False, id="origin null wins over a good referer"
        ),
        pytest.param(None, None, True, id="sec-fetch only"),
        pytest.param("https://", None, False, id="origin without host"),
        pytest.param("garbage", None, False, id="malformed origin"),
        pytest.param(None, "", False, id="empty referer"),
    ],
)
def test_front_end_without_domain_matches_nothing(
    origin: str | None, referer: str | None, sec_fetch: bool
) -> None:
    for r in (rules(True, False), rules(True, True)):
        decision = r.decide(origin, referer, sec_fetch, LISTED_IP)
        assert not decision.allowed
        assert decision.reason is Reason.NO_DOMAIN


@pytest.mark.promise("P-REQUEST-DOMAIN")
def test_origin_takes_precedence_over_referer() -> None:
    r = rules(True, False)
    assert not r.decide(OTHER_ORIGIN, "https://app.example.com/", False, None).allowed
    assert r.decide(LISTED_ORIGIN, "https://evil.test/", False, None).allowed


@pytest.mark.promise("P-REQUEST-DOMAIN")
def test_referer_used_when_no_origin() -> None:
    r = rules(True, False)
    assert r.decide(None, "https://app.example.com/page?q=1", False, None).allowed
    assert not r.decide(None, "https://evil.test/app.example.com", False, None).allowed


@pytest.mark.promise("P-MISSING-SOURCE-DENIED")
def test_back_end_without_client_ip_is_denied() -> None:
    decision = rules(False, True).decide(None, None, False, None)
    assert (decision.allowed, decision.reason) == (False, Reason.NO_IP)


@pytest.mark.promise("P-UNKNOWN-TOKEN")
@pytest.mark.parametrize("allowed", [True, False])
def test_unknown_token_policy(allowed: bool) -> None:
    r = TokenRules(None, unknown_allowed=allowed)
    for args in ((LISTED_ORIGIN, None, False, None), (None, None, False, LISTED_IP)):
        decision = r.decide(*args)
        assert (decision.allowed, decision.reason) == (allowed, Reason.UNKNOWN_TOKEN)


def test_decisions_are_shared_constants() -> None:
    r = rules(True, True)
    assert r.decide(LISTED_ORIGIN, None, False, None) is r.decide(LISTED_ORIGIN, None, False, None)
