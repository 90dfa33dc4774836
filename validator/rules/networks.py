"""Admin-side normalisation of IP entries: canonical networks, minimum prefixes, removals."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from validator.errors import ConfigurationError, InvalidEntry

if TYPE_CHECKING:
    pass
from validator.rules.entries import _REFUSED, Normalized
from validator.rules.ips import IPNetwork

# docs/behaviour.md: networks have a minimum prefix length (a site), so that no entry admits the public
# at large. Settings of `Admin` (`min_prefix_v4`, `min_prefix_v6`); allow_private does not lift them.
DEFAULT_MIN_PREFIX_V4 = 16
DEFAULT_MIN_PREFIX_V6 = 48


def check_min_prefixes(min_prefix_v4: int, min_prefix_v6: int) -> None:
    """Raise `ConfigurationError` unless both settings are prefix lengths of their version."""
    for name, value, longest in (("min_prefix_v4", min_prefix_v4, 32), ("min_prefix_v6", min_prefix_v6, 128)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= longest:
            raise ConfigurationError(f"{name} must be a prefix length from 0 to {longest}, not {value!r}")


def _span(network: IPNetwork) -> tuple[int, int, int]:
    """(version, first, last address as integers): overlap tests on these are integer compares,
    ~20x faster than `IPv4Network.overlaps`, which an import of 100,000 tokens calls millions of times."""
    first = int(network.network_address)
    return network.version, first, first | ((1 << (network.max_prefixlen - network.prefixlen)) - 1)


# Smallest range first, so that an entry inside several (Teredo inside 2001::/23) gets the
# most specific reason.
_REFUSED_SPANS: tuple[tuple[tuple[int, int, int], str, str], ...] = tuple(
    sorted(
        ((_span(ipaddress.ip_network(net)), net, why) for net, why in _REFUSED),
        key=lambda refused: refused[0][2] - refused[0][1],
    )
)
_GLOBAL_UNICAST_V6 = _span(ipaddress.IPv6Network("2000::/3"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_v4(network: IPNetwork) -> str:
    """`; list <IPv4> instead` for a 6to4 or NAT64 entry that names one IPv4 host, else ``."""
    if not isinstance(network, ipaddress.IPv6Network):
        return ""
    address = network.network_address
    if network.prefixlen >= 48 and address in _SIX_TO_FOUR:
        return f"; list {address.sixtofour} instead"
    if network.prefixlen == 128 and address in _NAT64:
        return f"; list {ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)} instead"
    return ""


def _refusal(network: IPNetwork) -> str | None:
    """Why `network` lies wholly in a range that is not static public addresses, or None."""
    version, first, last = _span(network)
    for (refused_version, low, high), net, why in _REFUSED_SPANS:
        if refused_version == version and low <= first and last <= high:
            return f"{net} is {why}{_embedded_v4(network)}"
    _, low, high = _GLOBAL_UNICAST_V6
    if version == 6 and (last < low or high < first):
        return "only global unicast IPv6 (2000::/3) is public"
    return None


def _reaches(network: IPNetwork) -> str | None:
    """Which non-public range `network` reaches into without lying in it, or None."""
    version, first, last = _span(network)
    for (refused_version, low, high), net, why in _REFUSED_SPANS:
        if refused_version == version and first <= high and low <= last:
            return f"{net}, which is {why}"
    _, low, high = _GLOBAL_UNICAST_V6
    if version == 6 and not low <= first <= last <= high:
        return "addresses outside 2000::/3, and only global unicast IPv6 is public"
    return None


def _too_large(network: IPNetwork, min_prefix_v4: int, min_prefix_v6: int) -> str | None:
    minimum, setting = (
        (min_prefix_v4, "min_prefix_v4") if network.version == 4 else (min_prefix_v6, "min_prefix_v6")
    )
    if network.prefixlen >= minimum:
        return None
    bits = network.max_prefixlen - network.prefixlen
    count = f"{1 << bits:,}" if bits <= 32 else f"2^{bits}"
    return (
        f"network too large: /{network.prefixlen} covers {count} addresses; the minimum prefix is "
        f"/{minimum} (setting {setting}, --{setting.replace('_', '-')})"
    )


def _ip_network(entry: str, *, drop_zone: bool) -> IPNetwork:
    """An IP entry as a network (an address is a /32 or /128), IPv4-mapped IPv6 collapsed to
    IPv4 as `parse_ip` does at request time. A zone is refused, or dropped if `drop_zone`."""
    text = entry.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or len(text) > 100:
        raise InvalidEntry(f"{entry!r} is not an IP address or network")
    address, percent, rest = text.partition("%")
    if percent and ":" in address:
        zone, slash, prefix = rest.partition("/")
        text = address + slash + prefix
        if not drop_zone:
            # docs/behaviour.md, "one address, one entry": `%eth0` names an interface of one host, and
            # the same address under five zones would fill five slots of the list.
            raise InvalidEntry(
                f"{entry!r} has an IPv6 zone identifier (%{zone}), which names a network interface "
                f"of one host and is no part of the address: give {text!r} alone"
            )
    try:
        network: IPNetwork = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        if "has host bits set" in str(error):
            loose = ipaddress.ip_network(text, strict=False)
            raise InvalidEntry(
                f"{entry!r} has host bits set: did you mean the network {loose}, "
                f"or the address {text.partition('/')[0]}?"
            ) from None
        raise InvalidEntry(f"{entry!r} is not an IP address or CIDR network") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _stored_ip(network: IPNetwork) -> str:
    return str(network.network_address) if network.num_addresses == 1 else str(network)


def normalize_ip(
    entry: str,
    *,
    allow_private: bool = False,
    min_prefix_v4: int = DEFAULT_MIN_PREFIX_V4,
    min_prefix_v6: int = DEFAULT_MIN_PREFIX_V6,
) -> Normalized:
    """Normalise an admin's IP entry: an address or a CIDR network, IPv4 or IPv6, stored in
    canonical form (compressed IPv6; IPv4-mapped IPv6 as IPv4).

    Refused, with the reason: an IPv6 zone identifier; a network with host bits set or shorter
    than the minimum prefix; private, loopback, link-local, multicast, reserved, unspecified and
    special-purpose ranges (Teredo, 6to4, NAT64, ORCHID, benchmarking), unless `allow_private`,
    which does not lift the minimum prefix. Raises `InvalidEntry`.
    """
    network = _ip_network(entry, drop_zone=False)
    override = " (use allow_private / --allow-private to store it anyway)"
    if not allow_private:
        why = _refusal(network)
        if why is not None:
            raise InvalidEntry(f"{entry!r} is not a static public address: {why}{override}")
    why = _too_large(network, min_prefix_v4, min_prefix_v6)
    if why is not None:
        raise InvalidEntry(f"{entry!r}: {why}")
    if not allow_private:
        why = _reaches(network)
        if why is not None:
            raise InvalidEntry(
                f"{entry!r} reaches beyond static public addresses: it includes {why}{override}"
            )
    stored = _stored_ip(network)
    note = f"stored {stored!r}" if stored != entry.strip() else None
    return Normalized(entry, stored, note)


def canonical_ip(entry: str) -> Normalized:
    """The canonical form of any IP entry, whatever was allowed when it was stored: no range or
    size rule, and a zone dropped. What a removal compares. Raises `InvalidEntry`."""
    stored = _stored_ip(_ip_network(entry, drop_zone=True))
    return Normalized(entry, stored, f"the same entry as {stored!r}" if stored != entry.strip() else None)


def ip_removals(entries: Iterable[str], stored: Iterable[str]) -> dict[str, Normalized]:
    """What to remove from an IP list holding `stored` so that each of `entries` is gone,
    however it was typed and however it was stored: keyed by the stored text to remove.

    An entry matches its canonical form and every stored entry with the same canonical form
    (older versions stored entries as typed, zones included); text that is not an IP entry
    matches only itself, if it is stored. Raises `InvalidEntry` for text that is neither.
    """
    held: dict[str, list[str]] = {}
    for text in stored:
        try:
            held.setdefault(canonical_ip(text).stored, []).append(text)
        except InvalidEntry:
            held.setdefault(text, []).append(text)
    removals: dict[str, Normalized] = {}
    problems: list[str] = []
    for entry in entries:
        try:
            result = canonical_ip(entry)
        except InvalidEntry as error:
            raw = entry.strip()
            if raw in held:
                removals.setdefault(raw, Normalized(entry, raw, None))
            else:
                problems.append(str(error))
            continue
        removals.setdefault(result.stored, result)
        for text in held.get(result.stored, ()):
            if text not in removals:
                removals[text] = Normalized(
                    entry, text, f"also removed {text!r}, stored in that form earlier"
                )
    if problems:
        raise InvalidEntry("; ".join(problems) + " (nothing was changed)")
    return removals
