"""Property tests: the fast matching code against slow reference models (urllib, ipaddress)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from validator.rules.domains import DomainSet
from validator.rules.ips import IPSet, _v4_int
from validator.rules.request import host_of, is_hostname

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


@given(
    entries=st.lists(st.one_of(hostname, parents, parents.map(lambda p: "*." + p)), max_size=5),
    host=host_like,
)
def test_domain_set_agrees_with_reference(entries: list[str], host: str) -> None:
    assert (host in DomainSet(entries)) is reference_domain_match(host, entries)


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
