"""Matching rules of docs/behaviour.md, each as a table, with a malformed-input table beside each."""

from __future__ import annotations

import ipaddress

import pytest

from validator.errors import InvalidEntry
from validator.model import Restrictions
from validator.rules.decide import TokenRules
from validator.rules.domains import DomainSet, joined
from validator.rules.entries import normalize_domain
from validator.rules.ips import IPSet, parse_ip
from validator.rules.networks import normalize_ip
from validator.rules.request import _MEMO_SIZE, HOST_KEYS, host_key, host_of

# ------------------------------------------------------------------------------ host_of


@pytest.mark.promise("P-REQUEST-DOMAIN")
@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("https://example.com", "example.com"),
        ("https://Example.COM", "example.com"),
        ("https://example.com.", "example.com"),
        ("https://example.com:8443", "example.com"),
        ("http://example.com/path?q=1#frag", "example.com"),
        ("https://user:pw@example.com/", "example.com"),
        ("https://example.com@evil.test/", "evil.test"),
        ("https://a@b@evil.test/", "evil.test"),
        ("https://evil.test\\@example.com/", "evil.test"),
        ("https://evil.test?@example.com/", "evil.test"),
        ("https://evil.test#@example.com/", "evil.test"),
        ("chrome-extension://abcdef", "abcdef"),
        ("https://bücher.example", "xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_host_of(value: str, host: str) -> None:
    assert host_of(value) == host


@pytest.mark.promise("P-REQUEST-DOMAIN")
@pytest.mark.parametrize(
    "value",
    [
        "",
        "null",
        "example.com",
        "://example.com",
        "https://",
        "https:///path",
        "https://:443",
        "https://@",
        "https://example.com:port",
        "https://example.com:-1",
        "https://[::1]",
        "https://[::1",
        "https://" + "a" * 5000 + ".com",
        "https://exa\udcffmple.com",
        "https://ex ample.com:80x",
    ],
)
def test_host_of_malformed_has_no_host(value: str) -> None:
    assert host_of(value) is None


# ------------------------------------------------------------------------------ DomainSet

DOMAINS = DomainSet(["example.com", "*.shop.test"])


@pytest.mark.promise("P-DOMAIN-MATCH")
@pytest.mark.parametrize(
    ("host", "member"),
    [
        ("example.com", True),
        ("www.example.com", False),
        ("a.shop.test", True),
        ("a.b.shop.test", True),
        ("xn--80a.shop.test", True),  # an IDN label under a listed parent is a real subdomain
        ("shop.test", False),
        ("example.com.evil.test", False),
        ("evil-example.com", False),
        ("xample.com", False),
        ("\u0435xample.com", False),  # Cyrillic small letter ie
        ("xn--xample-2of.com", False),  # the same, punycoded
        ("evilshop.test", False),
        ("a b.shop.test", False),
        ("-a.shop.test", False),
        (".shop.test", False),
        ("", False),
    ],
)
def test_domain_set_membership(host: str, member: bool) -> None:
    assert (host in DOMAINS) is member


@pytest.mark.promise("P-DOMAIN-MATCH")
@pytest.mark.parametrize(
    "origin",
    [
        "https://\u0000.shop.test",
        "https://a%2eb.shop.test",
        "https://a\tb.shop.test",
        "https://evil.test\\.shop.test",
        "https://a_b-.shop.test",
    ],
)
def test_garbage_hosts_never_match_a_wildcard(origin: str) -> None:
    assert host_of(origin) not in DOMAINS


@pytest.mark.promise("P-DOMAIN-MATCH")
def test_domain_set_through_host_of() -> None:
    assert host_of("https://EXAMPLE.com.:443/") in DOMAINS
    assert host_of("https://example.com@evil.test") not in DOMAINS


# ------------------------------------------------------------------------------ normalize_domain


@pytest.mark.promise("P-DOMAIN-ENTRIES")
@pytest.mark.parametrize(
    ("entry", "stored", "noted"),
    [
        ("example.com", "example.com", False),
        ("Example.COM", "example.com", True),
        ("example.com.", "example.com", True),
        ("  example.com ", "example.com", False),
        ("https://Example.com/path", "example.com", True),  # docs/behaviour.md's own example
        ("https://example.com:8443", "https://example.com:8443", False),
        ("example.com/path", "example.com", True),
        ("example.com:3000", "example.com:3000", False),
        ("*.example.com", "*.example.com", False),
        ("*.Example.com", "*.example.com", True),
        ("bücher.example", "xn--bcher-kva.example", True),
        ("localhost", "localhost", False),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", False),
    ],
)
def test_normalize_domain(entry: str, stored: str, noted: bool) -> None:
    result = normalize_domain(entry)
    assert result.stored == stored
    assert (result.note is not None) is noted


@pytest.mark.promise("P-DOMAIN-ENTRIES")
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("exa mple.com", "not a hostname"),
        ("example..com", "not a hostname"),
        ("-example.com", "not a hostname"),
        ("*.", "not a hostname"),
        ("*", "wildcard"),
        ("a.*.example.com", "wildcard"),
        ("*example.com", "wildcard"),
        ("203.0.113.7", "IP address"),
        ("https://203.0.113.7/", "IP address"),
        ("a" * 64 + ".com", "not a hostname"),
        ("example.com:abc", "port"),
        ("xn--zz.example", "punycode"),
        ("https://", "no hostname"),
        ("ex\u0000ample.com", "hostname"),
    ],
)
def test_normalize_domain_refuses(entry: str, says: str) -> None:
    with pytest.raises(InvalidEntry, match=says):
        normalize_domain(entry)


# ------------------------------------------------------------------------------ IPs


@pytest.mark.promise("P-IP-MATCH")
@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::FFFF:cb00:7107", "203.0.113.7"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8::1%eth0", "2001:db8::1"),
    ],
)
def test_parse_ip(text: str, address: str) -> None:
    assert parse_ip(text) == ipaddress.ip_address(address)


@pytest.mark.promise("P-IP-MATCH")
@pytest.mark.parametrize(
    "text",
    [
        "",
        "203.0.113",
        "203.0.113.07",
        "0x7f.0.0.1",
        "127.1",
        "203.0.113.7 ",
        "1.2.3.4.5",
        "::g",
        "[::1]",
        "1" * 200,
    ],
)
def test_parse_ip_malformed(text: str) -> None:
    assert parse_ip(text) is None


IPS = IPSet(["203.0.113.7", "198.51.100.0/24", "2001:db8::/48", "2001:db8:ffff::1"])


@pytest.mark.promise("P-IP-MATCH")
@pytest.mark.parametrize(
    ("client_ip", "member"),
    [
        ("203.0.113.7", True),
        ("::ffff:203.0.113.7", True),
        ("::ffff:cb00:7107", True),
        ("203.0.113.8", False),
        ("198.51.100.0", True),
        ("198.51.100.255", True),
        ("198.51.101.1", False),
        ("2001:db8::1", True),
        ("2001:0db8:0000::abcd", True),
        ("2001:db8:1::1", False),
        ("2001:DB8:FFFF::1", True),
        ("2001:db8:ffff::2", False),
    ],
)
def test_ip_set_membership(client_ip: str, member: bool) -> None:
    assert (client_ip in IPS) is member


@pytest.mark.promise("P-IP-MATCH")
@pytest.mark.parametrize(
    "client_ip",
    [
        "",
        "203.0.113.07",
        "0xcb.0.113.7",
        "203.0.113.7.",
        "203.0.113.7/32",
        " 203.0.113.7",
        "203.0.113.+7",
        "203.0.113.256",
        "198.51.100.1000",
        "\u0661\u0669\u0668.51.100.1",  # Arabic-Indic digits
        "203.0.113.\u00b2",  # superscript two
        "unknown",
        "x" * 100_000,
    ],
)
def test_ip_set_malformed_never_matches(client_ip: str) -> None:
    assert client_ip not in IPS


@pytest.mark.promise("P-IP-MATCH")
def test_ip_set_ignores_entries_that_do_not_parse() -> None:
    ip_set = IPSet(["not-an-ip", "203.0.113.7", "1.2.3.4/99", "2001:db8::/300"])
    assert "203.0.113.7" in ip_set
    assert "not-an-ip" not in ip_set
    assert "1.2.3.4" not in ip_set
    assert len(ip_set) == 1


def test_ip_set_without_networks_takes_the_cheap_path() -> None:
    exact = IPSet(["203.0.113.7", "2001:db8::1"])
    assert "203.0.113.7" in exact
    assert "203.0.113.8" not in exact
    assert "2001:0db8::0001" in exact
    assert "::ffff:203.0.113.7" in exact


@pytest.mark.promise("P-IP-ENTRIES")
@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
@pytest.mark.parametrize(
    ("entry", "stored"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7/32", "203.0.113.7"),
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8::/48", "2001:db8::/48"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_normalize_ip(entry: str, stored: str) -> None:
    assert normalize_ip(entry).stored == stored


@pytest.mark.promise("P-IP-ENTRIES")
@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("fd00::1", "unique local"),
        ("0.0.0.0/0", "network too large: /0 covers 4,294,967,296 addresses"),
        ("8.0.0.0/4", "host bits set"),
        ("203.0.113.7/24", "did you mean the network 203.0.113.0/24"),
        ("203.0.113", "not an IP address"),
        ("example.com", "not an IP address"),
        ("", "not an IP address"),
        ("127.1", "not an IP address"),
    ],
)
def test_normalize_ip_refuses(entry: str, says: str) -> None:
    with pytest.raises(InvalidEntry, match=says):
        normalize_ip(entry)


@pytest.mark.promise("P-IP-ENTRIES")
def test_private_ip_allowed_with_override() -> None:
    assert normalize_ip("10.1.2.3", allow_private=True).stored == "10.1.2.3"
    assert normalize_ip("::1", allow_private=True).stored == "::1"


# ------------------------------------------------------------ lists as joined strings (hot path)


@pytest.mark.timeout(10)
def test_joined_lists_leave_out_entries_holding_a_separator() -> None:
    assert joined(["a.com", "b.com", "a.com"], "\n") == "\na.com\nb.com\n"
    assert joined(["a.com\nb.com", "c\td"], "\n") == "\n"  # nothing kept: no empty entry either
    assert "\n\n" not in joined([], "\n")


@pytest.mark.timeout(10)
def test_a_plain_token_keeps_one_string_and_no_sets() -> None:
    plain = TokenRules(
        Restrictions(domain_enabled=True, ip_enabled=True, domains=["a.example.com"], ips=["11.0.0.1"])
    )
    assert (plain.domain_set, plain.ip_set) == (None, None)
    assert plain.lists == "\na.example.com\n\t11.0.0.1\t"
    # A host never matches an address entry, nor an address a host entry.
    assert not plain.decide("https://11.0.0.1", None, False, None).allowed
    assert not plain.decide(None, None, False, "a.example.com").allowed
    wide = TokenRules(
        Restrictions(domain_enabled=True, ip_enabled=True, domains=["*.example.com"], ips=["11.0.0.0/24"])
    )
    assert wide.domain_set is not None and wide.ip_set is not None
    assert wide.decide("https://x.example.com", None, False, None).allowed
    assert wide.decide(None, None, False, "11.0.0.9").allowed
    assert wide.decide(None, None, False, "::ffff:11.0.0.9").allowed


@pytest.mark.timeout(10)
def test_host_key_memo_stays_bounded() -> None:
    for n in range(_MEMO_SIZE + 10):
        assert host_key(f"https://h{n}.example.com") == f"\nh{n}.example.com\n"
    assert len(HOST_KEYS) <= _MEMO_SIZE
    assert host_key("https://a b") is None
