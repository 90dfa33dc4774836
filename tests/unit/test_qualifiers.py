"""Domain entries qualified by scheme and port: how they are stored, and which requests they match.

A bare entry matches any scheme and port; `https://app.example.com` is one web origin (https,
port 443); `localhost:3000` is any scheme on port 3000; `localhost:*` is any port.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from validator.errors import InvalidEntry
from validator.model import Reason, Restrictions
from validator.rules.decide import TokenRules
from validator.rules.domains import DomainSet
from validator.rules.entries import normalize_domain
from validator.rules.request import host_of, origin_of

# ------------------------------------------------------------------------------ stored form


@pytest.mark.promise("P-DOMAIN-ENTRIES")
@pytest.mark.parametrize(
    ("entry", "stored"),
    [
        pytest.param("https://app.example.com", "https://app.example.com", id="origin"),
        pytest.param("HTTPS://App.Example.com", "https://app.example.com", id="origin upper case"),
        pytest.param("https://app.example.com/", "https://app.example.com", id="origin slash"),
        pytest.param("https://app.example.com:8443", "https://app.example.com:8443", id="origin port"),
        pytest.param("https://app.example.com:443", "https://app.example.com", id="https default port"),
        pytest.param("http://app.example.com:80", "http://app.example.com", id="http default port"),
        pytest.param("http://app.example.com:443", "http://app.example.com:443", id="other default"),
        pytest.param("https://app.example.com:08443", "https://app.example.com:8443", id="port zeros"),
        pytest.param("localhost:3000", "localhost:3000", id="host port"),
        pytest.param("localhost:*", "localhost:*", id="host any port"),
        pytest.param("http://localhost:*", "http://localhost:*", id="scheme host any port"),
        pytest.param("https://*.example.com", "https://*.example.com", id="wildcard origin"),
        pytest.param("*.example.com:8443", "*.example.com:8443", id="wildcard port"),
        pytest.param("example.com:443", "example.com:443", id="port without scheme stays"),
        pytest.param("https://bücher.example", "https://xn--bcher-kva.example", id="idn origin"),
        # docs/behaviour.md: a pasted URL keeps its host alone; only an origin qualifies an entry.
        pytest.param("https://app.example.com/login?next=/", "app.example.com", id="page url"),
        pytest.param("https://app.example.com:8443/x", "app.example.com", id="page url with port"),
        pytest.param("https://user:pw@app.example.com", "app.example.com", id="userinfo"),
        pytest.param("//app.example.com", "app.example.com", id="scheme relative"),
        pytest.param("app.example.com/path", "app.example.com", id="host path"),
    ],
)
def test_normalize_qualified_domain(entry: str, stored: str) -> None:
    result = normalize_domain(entry)
    assert result.stored == stored
    # The admin is told whenever what is stored is not what they typed.
    assert (result.note is not None) is (stored != entry.strip())


@pytest.mark.promise("P-DOMAIN-ENTRIES")
@pytest.mark.promise("P-STORED-FORM-TOLD")
@pytest.mark.parametrize(
    ("entry", "dropped"),
    [
        pytest.param("https://app.example.com/login", "path, scheme https; a URL keeps its host", id="path"),
        pytest.param("https://app.example.com?q=1", "path", id="query"),
        pytest.param("https://app.example.com#top", "path", id="fragment"),
        pytest.param("https://u@app.example.com", "user information", id="userinfo"),
        pytest.param("https://app.example.com:443", "port 443, the default of https", id="default port"),
    ],
)
def test_note_names_what_was_dropped(entry: str, dropped: str) -> None:
    note = normalize_domain(entry).note
    assert note is not None
    assert dropped in note


@pytest.mark.promise("P-DOMAIN-ENTRIES")
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        pytest.param("ftp://example.com", "only http:// or https://", id="ftp scheme"),
        pytest.param("chrome-extension://abcdef", "only http:// or https://", id="extension scheme"),
        pytest.param("://example.com", "only http:// or https://", id="empty scheme"),
        pytest.param("example.com:", "port number", id="colon without port"),
        pytest.param("example.com:0", "port number", id="port zero"),
        pytest.param("example.com:65536", "port number", id="port too large"),
        pytest.param("example.com:123456", "port number", id="port too long"),
        pytest.param("example.com:-1", "port number", id="negative port"),
        pytest.param("example.com:8o", "port number", id="letter in port"),
        pytest.param("example.com:\u0663", "port number", id="non-ascii digit"),
        pytest.param("localhost:**", "port number", id="double star"),
        pytest.param("localhost:*1", "port number", id="star and digit"),
        pytest.param("example.com:80:80", "port number", id="two ports"),
        pytest.param("https://", "no hostname", id="scheme only"),
        pytest.param("https://:443", "no hostname", id="port only"),
        pytest.param("https://user@", "no hostname", id="userinfo only"),
        pytest.param("*:3000", "wildcard", id="star host with port"),
        pytest.param("https://*", "wildcard", id="star host with scheme"),
        pytest.param("https://a.*.example.com", "wildcard", id="inner wildcard"),
        pytest.param("https://[::1]:3000", "IP address", id="ipv6 literal"),
        pytest.param("http://203.0.113.7:8080", "IP address", id="ipv4 with port"),
        pytest.param("https://exa mple.com", "not a hostname", id="space"),
    ],
)
def test_normalize_qualified_domain_refuses(entry: str, says: str) -> None:
    with pytest.raises(InvalidEntry, match=says):
        normalize_domain(entry)


# ------------------------------------------------------------------------------ origin_of


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
@pytest.mark.parametrize(
    ("url", "origin"),
    [
        pytest.param("https://app.example.com", ("https", "app.example.com", 443), id="https default"),
        pytest.param("http://app.example.com", ("http", "app.example.com", 80), id="http default"),
        pytest.param("https://app.example.com:8443/x", ("https", "app.example.com", 8443), id="port"),
        pytest.param("https://app.example.com:/x", ("https", "app.example.com", 443), id="empty port"),
        pytest.param("HTTPS://APP.example.com", ("https", "app.example.com", 443), id="upper case"),
        pytest.param("https://a:1@app.example.com:9/", ("https", "app.example.com", 9), id="userinfo"),
        pytest.param("https://x.test:1@evil.test/", ("https", "evil.test", 443), id="colon in userinfo"),
        pytest.param("https://evil.test\\@x.test:9", ("https", "evil.test", 443), id="backslash"),
        pytest.param("chrome-extension://abcdef", ("chrome-extension", "abcdef", None), id="no default"),
    ],
)
def test_origin_of(url: str, origin: tuple[str, str, int | None]) -> None:
    assert origin_of(url) == origin


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("", id="empty"),
        pytest.param("null", id="null"),
        pytest.param("https://", id="no host"),
        pytest.param("https://app.example.com:0", id="port zero"),
        pytest.param("https://app.example.com:65536", id="port too large"),
        pytest.param("https://app.example.com:" + "9" * 50, id="port too long"),
        pytest.param("https://app.example.com:44x", id="letter in port"),
        pytest.param("https://[::1]:443", id="ipv6 literal"),
    ],
)
def test_origin_of_malformed(url: str) -> None:
    assert origin_of(url) is None


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
@given(
    scheme=st.sampled_from(["http", "https", "wss"]),
    userinfo=st.one_of(st.just(""), st.from_regex(r"[a-z0-9]{1,6}(:[0-9]{1,6})?@", fullmatch=True)),
    host=st.lists(label, min_size=1, max_size=4).map(".".join),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    rest=st.sampled_from(["", "/", "/path", "/p?q=1", "?q", "#f", "/a@b:1", "?x:2"]),
)
def test_origin_of_agrees_with_urllib(
    scheme: str, userinfo: str, host: str, port: int | None, rest: str
) -> None:
    url = f"{scheme}://{userinfo}{host}{'' if port is None else f':{port}'}{rest}"
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(scheme)
    assert origin_of(url) == (parts.scheme, parts.hostname, parts.port or default)


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
@given(url=st.one_of(st.text(max_size=40), st.text(max_size=30).map(lambda t: "https://" + t)))
def test_origin_of_never_raises_and_agrees_with_host_of(url: str) -> None:
    origin = origin_of(url)
    if origin is not None:
        assert origin[1] == host_of(url)


# ------------------------------------------------------------------------------ matching

QUALIFIED = DomainSet(
    [
        "https://app.example.com",
        "localhost:3000",
        "http://localhost:*",
        "*.dev.test:8443",
        "https://*.shop.test",
        "example.com",
    ]
)


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
@pytest.mark.parametrize(
    ("url", "member"),
    [
        pytest.param("https://app.example.com", True, id="origin"),
        pytest.param("https://app.example.com:443/page", True, id="referer explicit default port"),
        pytest.param("http://app.example.com", False, id="origin other scheme"),
        pytest.param("https://app.example.com:8443", False, id="origin other port"),
        pytest.param("wss://app.example.com", False, id="origin websocket scheme"),
        pytest.param("http://localhost:3000", True, id="port any scheme http"),
        pytest.param("https://localhost:3000", True, id="port any scheme https"),
        pytest.param("https://localhost:3001", False, id="port other port"),
        pytest.param("https://localhost", False, id="port default port"),
        pytest.param("http://localhost:5173", True, id="any port"),
        pytest.param("http://localhost", True, id="any port default"),
        pytest.param("https://a.dev.test:8443", True, id="wildcard port"),
        pytest.param("http://a.b.dev.test:8443", True, id="wildcard port deep"),
        pytest.param("https://dev.test:8443", False, id="wildcard port parent itself"),
        pytest.param("https://a.dev.test", False, id="wildcard port default"),
        pytest.param("https://a.shop.test", True, id="wildcard origin"),
        pytest.param("http://a.shop.test", False, id="wildcard origin other scheme"),
        pytest.param("https://a.shop.test:444", False, id="wildcard origin other port"),
        pytest.param("https://shop.test", False, id="wildcard origin parent itself"),
        pytest.param("http://example.com:81", True, id="bare any port"),
        pytest.param("ftp://example.com", True, id="bare any scheme"),
        pytest.param("https://app.example.com.evil.test", False, id="look-alike"),
        pytest.param("https://localhost:3000@evil.test", False, id="userinfo trick"),
        pytest.param("https://app.example.com:99999", False, id="bad port"),
        pytest.param("https://a_b-.dev.test:8443", False, id="garbage under wildcard"),
    ],
)
def test_qualified_domain_set(url: str, member: bool) -> None:
    host = host_of(url)
    assert host is not None
    assert QUALIFIED.matches(host, url) is member


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
def test_host_alone_matches_only_bare_entries() -> None:
    assert "example.com" in QUALIFIED
    assert "app.example.com" not in QUALIFIED
    assert "localhost" not in QUALIFIED


def test_qualified_flag_and_size() -> None:
    assert QUALIFIED.qualified
    assert len(QUALIFIED) == 6
    assert not DomainSet(["example.com", "*.example.com"]).qualified


@pytest.mark.promise("P-QUALIFIED-ENTRIES")
@pytest.mark.parametrize(
    ("origin", "referer", "reason"),
    [
        pytest.param("https://app.example.com", None, Reason.DOMAIN_LISTED, id="origin listed"),
        pytest.param("http://app.example.com", None, Reason.DOMAIN_NOT_LISTED, id="origin wrong scheme"),
        pytest.param(None, "https://app.example.com/p", Reason.DOMAIN_LISTED, id="referer listed"),
        pytest.param(None, "https://app.example.com:8/", Reason.DOMAIN_NOT_LISTED, id="referer wrong port"),
        pytest.param("https://app.example.com:x", None, Reason.NO_DOMAIN, id="malformed port"),
    ],
)
def test_token_rules_honour_qualifiers(origin: str | None, referer: str | None, reason: Reason) -> None:
    rules = TokenRules(Restrictions(domain_enabled=True, domains=["https://app.example.com"]))
    assert rules.decide(origin, referer, False, None).reason is reason
