"""A token's IP list shaped for the hot path: `parse_ip` and `IPSet`."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from validator.rules.domains import _compact
from validator.rules.request import _AF_INET, _inet_pton, _remembered

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
    """

    __slots__ = ("_canonical", "_v4", "_v6")

    def __init__(self, entries: Iterable[str]) -> None:
        canonical: set[str] = set()
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for entry in entries:
            address, _, prefix = entry.partition("/")
            value = _v4_int(address)
            if value is not None and (not prefix or (prefix.isdigit() and int(prefix) <= 32)):
                shift = 32 - int(prefix or 32)
                if shift == 0:
                    canonical.add(address)
                else:
                    v4.setdefault(shift, set()).add(value >> shift)
                continue
            try:
                network = ipaddress.ip_network(entry)
            except ValueError:
                continue
            shift = network.max_prefixlen - network.prefixlen
            if network.version == 4 and shift == 0:
                canonical.add(str(network.network_address))
            else:
                table = v4 if network.version == 4 else v6
                table.setdefault(shift, set()).add(int(network.network_address) >> shift)
                if shift == 0:
                    canonical.add(str(network.network_address))
        self._canonical = _compact(canonical)
        # Exact IPv4 addresses live in `_canonical` only: every spelling of one is canonicalised
        # before it is looked up, so the tables hold networks (and IPv6 addresses).
        self._v4 = tuple((shift, _compact(nets)) for shift, nets in v4.items())
        self._v6 = tuple((shift, _compact(nets)) for shift, nets in v6.items())

    def __contains__(self, client_ip: object) -> bool:
        if client_ip in self._canonical:
            return True
        if not isinstance(client_ip, str):
            return False
        value = _v4_int_seen(client_ip)
        if value is None:
            # Not plain dotted decimal: IPv6 in any spelling, or IPv4-mapped IPv6.
            address = parse_ip(client_ip)
            if address is None:
                return False
            if address.version == 6:
                value = int(address)
                return any(value >> shift in networks for shift, networks in self._v6)
            if str(address) in self._canonical:
                return True
            value = int(address)
        for shift, networks in self._v4:  # noqa: SIM110 - a loop: no generator per check
            if value >> shift in networks:
                return True
        return False

    def __len__(self) -> int:
        v6_networks = sum(len(nets) for shift, nets in self._v6 if shift)
        return len(self._canonical) + sum(len(nets) for _, nets in self._v4) + v6_networks
