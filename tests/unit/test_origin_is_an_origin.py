"""docs/behaviour.md "Origin must be an origin": a value that is not a URL with a valid scheme, `://` and a
host has no domain, so it matches nothing; the same for Referer."""

from __future__ import annotations

import pytest

from validator.model import Reason, Restrictions
from validator.rules.decide import compile_rules
from validator.rules.domains import DomainSet
from validator.rules.request import host_of, origin_of

pytestmark = [pytest.mark.promise("P-ORIGIN-IS-AN-ORIGIN")]

LISTED = DomainSet(["app.example.com", "*.example.com", "https://shop.test"])
RULES = compile_rules(Restrictions(domain_enabled=True, domains=["app.example.com", "*.example.com"]))

# RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
VALID_SCHEMES = [
    pytest.param("https://app.example.com", id="https"),
    pytest.param("HTTP://APP.EXAMPLE.COM", id="upper case"),
    pytest.param("chrome-extension://app.example.com", id="hyphen"),
    pytest.param("web+app://app.example.com", id="plus"),
    pytest.param("x.y://app.example.com", id="dot"),
    pytest.param("a1://app.example.com", id="digit after the first letter"),
    pytest.param("https://app.example.com:65535/", id="highest port"),
    pytest.param("https://app.example.com:/", id="empty port"),
]


@pytest.mark.parametrize("url", VALID_SCHEMES)
def test_valid_scheme_has_its_host(url: str) -> None:
    assert host_of(url) == "app.example.com"


MALFORMED = [
    pytest.param("ht!tp://app.example.com", id="issue 12 item 11: ! in the scheme"),
    pytest.param("ht tp://app.example.com", id="space in the scheme"),
    pytest.param("1http://app.example.com", id="scheme starts with a digit"),
    pytest.param("-http://app.example.com", id="scheme starts with a hyphen"),
    pytest.param("+://app.example.com", id="scheme of one symbol"),
    pytest.param("://app.example.com", id="empty scheme"),
    pytest.param("htt\u0440s://app.example.com", id="Cyrillic letter in the scheme"),
    pytest.param("https:app.example.com", id="no //"),
    pytest.param("https:/app.example.com", id="one /"),
    pytest.param("//app.example.com", id="scheme-relative"),
    pytest.param("app.example.com", id="bare host"),
    pytest.param("javascript:x//y://app.example.com", id=":// deeper in the value"),
    pytest.param("evil.test/?://app.example.com", id="no scheme, :// in the query"),
    pytest.param(" https://app.example.com", id="leading space"),
    pytest.param("\thttps://app.example.com", id="leading tab"),
    pytest.param("https://app.example.com ", id="trailing space"),
    pytest.param("https://app.example.com\n", id="trailing newline"),
    pytest.param("https://app.example.com\r\n", id="trailing CRLF"),
    pytest.param("https://app.exa\tmple.com", id="tab in the host"),
    pytest.param("https://app.example.com\x00", id="NUL"),
    pytest.param("https://app.example.com\x7f", id="DEL"),
    pytest.param("https://app.example.com/a b", id="space in a Referer path"),
]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_value_has_no_host(url: str) -> None:
    assert host_of(url) is None
    assert origin_of(url) is None


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_origin_matches_nothing(url: str) -> None:
    decision = RULES.decide(url, None, False, None)
    assert (decision.allowed, decision.reason) == (False, Reason.NO_DOMAIN)


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_referer_matches_nothing(url: str) -> None:
    decision = RULES.decide(None, url, False, None)
    assert (decision.allowed, decision.reason) == (False, Reason.NO_DOMAIN)


def test_qualified_entries_need_a_valid_scheme_too() -> None:
    assert LISTED.matches("shop.test", "https://shop.test")
    assert host_of("ht!tps://shop.test") is None
