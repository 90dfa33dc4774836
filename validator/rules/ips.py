"""A token's IP list shaped for the hot path: `parse_ip` and `IPSet`."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from validator.rules.domains import _compact, joined
from validator.rules.request import _AF_INET, IP_SEP, _inet_pton, _remembered

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """An address for comparison: IPv4-mapped IPv6 becomes IPv4, a zone is dropped. Never raises."""
    if len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _v4_int(text: str) -> int | None:
    """Strict dotted-decimal IPv4 to an integer, or None.

    glibc's inet_pton accepts exactly what `ipaddress` accepts (four decimal octets, no leading
    zeros), five times faster; tests/unit/test_matching_properties.py holds it to that.
    """
    try:
        return int.from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, ValueError):
        return None


_v4_int_seen = _remembered(_v4_int)


class IPSet:
    """A token's IP list: addresses and CIDR networks, one hash look-up per prefix length.

    Entries come from the store; one that does not parse (written there by hand) matches nothing.
    The exact IPv4 addresses are `exact`, joined (`joined`, IP_SEP): the hot path (`TokenRules`)
    keeps that string alone when `networks` is false, and this object otherwise.
    """

    __slots__ = ("_v4", "_v6", "exact")

    def __init__(self, entries: Iterable[str]) -> None:
        canonical: list[str] = []
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for entry in entries:
            address, _, prefix = entry.partition("/")
            value = _v4_int(address)
            if value is not None and (not prefix or (prefix.isdigit() and int(prefix) <= 32)):
                shift = 32 - int(prefix or 32)
                if shift == 0:
                    canonical.append(address)
                else:
                    v4.setdefault(shift, set()).add(value >> shift)
                continue
            try:
                network = ipaddress.ip_network(entry)
            except ValueError:
                continue
            shift = network.max_prefixlen - network.prefixlen
            if network.version == 4 and shift == 0:
                canonical.append(str(network.network_address))
            else:
                table = v4 if network.version == 4 else v6
                table.setdefault(shift, set()).add(int(network.network_address) >> shift)
        # Exact IPv4 addresses live in `exact` only: every spelling of one is canonicalised
        # before it is looked up, so the tables hold networks and IPv6 addresses (an IPv6 text
        # has many spellings: it is always parsed).
        self.exact = joined(canonical, IP_SEP)
        self._v4 = tuple((shift, _compact(nets)) for shift, nets in v4.items())
        self._v6 = tuple((shift, _compact(nets)) for shift, nets in v6.items())

    @property
    def networks(self) -> bool:
        """Whether any entry is a network or an IPv6 address: `exact` alone does not answer."""
        return bool(self._v4 or self._v6)

    def __contains__(self, client_ip: object) -> bool:
        return isinstance(client_ip, str) and ip_listed(self.exact, self, client_ip)

    def __len__(self) -> int:
        v6_networks = sum(len(nets) for _, nets in self._v6)
        return self.exact.count(IP_SEP) - 1 + sum(len(nets) for _, nets in self._v4) + v6_networks


def ip_listed(exact: str, networks: IPSet | None, client_ip: str) -> bool:
    """Whether `client_ip` is listed: one of the addresses joined in `exact` (IP_SEP, any
    spelling), or in `networks` (the list's networks and IPv6 addresses, None if it has none)."""
    if IP_SEP in client_ip:
        return False  # no address; kept out, it could span two joined entries
    if f"{IP_SEP}{client_ip}{IP_SEP}" in exact:
        return True
    if networks is None and ":" not in client_ip:
        # Text without ":" is an address only in plain dotted decimal, which is the canonical
        # form (`_v4_int` refuses leading zeros, as `ipaddress` does): it was looked up above.
        return False
    value = _v4_int_seen(client_ip)
    if value is None:
        # Not plain dotted decimal: IPv6 in any spelling, or IPv4-mapped IPv6.
        address = parse_ip(client_ip)
        if address is None:
            return False
        if address.version == 6:
            value = int(address)
            return networks is not None and any(value >> shift in nets for shift, nets in networks._v6)
        if f"{IP_SEP}{address}{IP_SEP}" in exact:
            return True
        value = int(address)
    if networks is None:
        return False
    for shift, nets in networks._v4:  # noqa: SIM110 - a loop: no generator per check
        if value >> shift in nets:
            return True
    return False
