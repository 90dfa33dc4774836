"""Property tests: the fast matching code against slow reference models (urllib, ipaddress)."""

from __future__ import annotations

import ipaddress
import itertools
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validator.model import Restrictions
from validator.rules.decide import TokenRules
from validator.rules.domains import DomainSet
from validator.rules.ips import IPSet, _v4_int, parse_ip
from validator.rules.request import _scanned_host, host_of, is_hostname

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
parents = st.sampled_from(["example.com", "shop.test", "a.example.com", "com"])
host_like = st.one_of(
    hostname,
    st.builds(lambda sub, parent: f"{sub}.{parent}", hostname, parents),
    parents,
    st.text(max_size=30),
)


def reference_domain_match(host: str, entries: list[str]) -> bool:
    for entry in entries:
        if entry.startswith("*."):
            if host.endswith("." + entry[2:]) and is_hostname(host):
                return True
        elif host == entry:
            return True
    return False


@pytest.mark.promise("P-DOMAIN-MATCH")
@given(
    entries=st.lists(st.one_of(hostname, parents, parents.map(lambda p: "*." + p)), max_size=5),
    host=host_like,
)
def test_domain_set_agrees_with_reference(entries: list[str], host: str) -> None:
    assert (host in DomainSet(entries)) is reference_domain_match(host, entries)


@pytest.mark.promise("P-REQUEST-DOMAIN")
@given(
    scheme=st.sampled_from(["http", "https", "wss"]),
    userinfo=st.one_of(st.just(""), st.from_regex(r"[a-z0-9]{1,6}(:[a-z0-9]{1,6})?@", fullmatch=True)),
    host=hostname,
    dot=st.booleans(),
    port=st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    rest=st.sampled_from(["", "/", "/path", "/p?q=1", "?q", "#f", "/a@b"]),
    upper=st.booleans(),
)
def test_host_of_agrees_with_urllib(
    scheme: str, userinfo: str, host: str, dot: bool, port: str, rest: str, upper: bool
) -> None:
    url = f"{scheme}://{userinfo}{host.upper() if upper else host}{'.' if dot else ''}{port}{rest}"
    expected = urlsplit(url).hostname
    assert expected is not None
    assert host_of(url) == expected.rstrip(".")


v4_networks = st.builds(
    lambda addr, plen: ipaddress.IPv4Network((addr, plen), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
v6_networks = st.builds(
    lambda addr, plen: ipaddress.IPv6Network((addr, plen), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(16, 128),
)
networks = st.lists(st.one_of(v4_networks, v6_networks), max_size=5)


def spellings(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    if isinstance(address, ipaddress.IPv4Address):
        return [str(address), f"::ffff:{address}", str(ipaddress.IPv6Address(f"::ffff:{address}")).upper()]
    return [str(address), address.exploded, address.exploded.upper()]


@pytest.mark.promise("P-IP-MATCH")
@settings(max_examples=300)
@given(entries=networks, near=st.booleans(), data=st.data())
def test_ip_set_agrees_with_ipaddress(
    entries: list[ipaddress.IPv4Network | ipaddress.IPv6Network], near: bool, data: st.DataObject
) -> None:
    ip_set = IPSet(str(n) for n in entries)
    if near and entries:
        network = data.draw(st.sampled_from(entries))
        offset = data.draw(st.integers(-2, network.num_addresses + 1))
        top = 2**32 - 1 if network.version == 4 else 2**128 - 1
        value = min(max(int(network.network_address) + offset, 0), top)
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(value)
        if network.version == 6:
            address = ipaddress.IPv6Address(value)
    else:
        address = data.draw(
            st.one_of(
                st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
            )
        )
    comparable = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        comparable = address.ipv4_mapped
    expected = any(comparable in n for n in entries)
    for text in spellings(address):
        assert (text in ip_set) is expected, text


def reference_v4_int(text: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return None


@pytest.mark.promise("P-IP-MATCH")
@settings(max_examples=500)
@given(
    text=st.one_of(
        st.lists(st.integers(0, 300).map(str), min_size=1, max_size=6).map(".".join),
        st.lists(st.from_regex(r"[0-9]{1,4}", fullmatch=True), min_size=4, max_size=4).map(".".join),
        st.text(alphabet="0123456789.x+- \u0661\u00b2", max_size=20),
    )
)
def test_fast_ipv4_parser_agrees_with_ipaddress(text: str) -> None:
    assert _v4_int(text) == reference_v4_int(text)


# ---------------------------------------------------------------- the hot path's shortcuts
# `host_of` answers the plain form with one regex, `TokenRules` holds each list as one joined
# string (`validator.rules.domains.joined`) and denies a text without ":" that is not listed
# verbatim without parsing it. Each is held here to the general code or to a reference model.

url_part = st.text(alphabet="aZ09._-:@[]%/?#\\\t\n \x7f\u00e9", max_size=12)


@pytest.mark.promise("P-REQUEST-DOMAIN")
@settings(max_examples=1000)
@pytest.mark.timeout(60)
@given(
    url=st.one_of(
        st.builds(
            lambda scheme, host, rest: f"{scheme}://{host}{rest}",
            st.sampled_from(["http", "https", "HTTPS", "wss", "ht!tp", ""]),
            st.one_of(hostname, url_part),
            st.one_of(st.sampled_from(["", "/", "/p?q=1", "#f", "/a@b", "\\x", ".", "..", ":443"]), url_part),
        ),
        st.text(max_size=30),
    )
)
def test_plain_url_shortcut_agrees_with_the_general_scan(url: str) -> None:
    assert host_of(url) == _scanned_host(url)


@pytest.mark.promise("P-IP-MATCH")
@settings(max_examples=500)
@pytest.mark.timeout(60)
@given(
    text=st.one_of(
        st.lists(st.integers(0, 300).map(str), min_size=1, max_size=6).map(".".join),
        st.lists(st.from_regex(r"0?[0-9]{1,3}", fullmatch=True), min_size=4, max_size=4).map(".".join),
        st.text(alphabet="0123456789.x%/ \t\n\u0661", max_size=20),
    )
)
def test_text_without_a_colon_is_an_address_only_in_canonical_form(text: str) -> None:
    """What lets `TokenRules` deny an unlisted text without ":" without parsing it."""
    address = parse_ip(text)
    assert address is None or str(address) == text


separated = st.builds(lambda a, sep, b: f"{a}{sep}{b}", hostname, st.sampled_from(["\n", "\t"]), hostname)


@pytest.mark.promise("P-DOMAIN-MATCH")
@settings(max_examples=500)
@pytest.mark.timeout(60)
@given(
    entries=st.lists(st.one_of(hostname, parents, parents.map(lambda p: "*." + p), separated), max_size=5),
    extra=st.lists(st.one_of(hostname, separated), max_size=2),
    data=st.data(),
)
def test_token_rules_domains_agree_with_reference(
    entries: list[str], extra: list[str], data: st.DataObject
) -> None:
    rules = TokenRules(Restrictions(domain_enabled=True, domains=entries))
    spans = [f"{a}{sep}{b}" for a, b in itertools.pairwise(entries) for sep in "\t\n"]
    candidates = [*entries, *extra, *spans, "", "11.0.0.1"]
    host = data.draw(st.one_of(st.sampled_from(candidates), host_like))
    if host.startswith("*."):
        host = "a" + host[1:]
    url = f"https://{host}"
    expected_host = host_of(url)
    expected = expected_host is not None and reference_domain_match(expected_host, entries)
    assert rules.decide(url, None, False, None).allowed is expected
    # And the DomainSet API, which takes any text for a host: an odd entry matches itself only.
    assert (host in DomainSet(entries)) is reference_domain_match(host, entries)


def reference_ip_match(text: str, entries: list[str]) -> bool:
    address = parse_ip(text)
    if address is None:
        return False
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False


v4_address = st.integers(0x0B000000, 0x0B0000FF).map(lambda v: str(ipaddress.IPv4Address(v)))


@pytest.mark.promise("P-IP-MATCH")
@settings(max_examples=500)
@pytest.mark.timeout(60)
@given(
    entries=st.lists(
        st.one_of(
            v4_address,
            v4_address.map(lambda a: a.rsplit(".", 1)[0] + ".0/24"),
            st.just("2001:db8::1"),
            st.builds(
                lambda a, sep, b: f"{a}{sep}{b}", v4_address, st.sampled_from(["\n", "\t"]), v4_address
            ),
        ),
        max_size=5,
    ),
    data=st.data(),
)
def test_token_rules_ips_agree_with_ipaddress(entries: list[str], data: st.DataObject) -> None:
    rules = TokenRules(Restrictions(ip_enabled=True, ips=entries))
    listed = [e for e in entries if "/" not in e]
    # Two neighbours of the joined string, as one text: it must not match across the separator.
    spans = [f"{a}{sep}{b}" for a, b in itertools.pairwise(listed) for sep in "\t\n"]
    text = data.draw(
        st.one_of(
            st.sampled_from([*listed, *spans, "11.0.0.1", "011.0.0.1", "x"]),
            v4_address,
            v4_address.map(lambda a: f"::ffff:{a}"),
            st.just("2001:DB8:0::1"),
            st.text(alphabet="0123456789.:\t\nf", max_size=16),
        )
    )
    expected = bool(text) and reference_ip_match(text, entries)
    assert rules.decide(None, None, False, text).allowed is expected, text
    assert (text in IPSet(entries)) is reference_ip_match(text, entries)
