"""The client address behind trusted proxies: `Forwarded` (RFC 7239), `X-Forwarded-For`, and the
single-address headers edges set (`X-Real-IP`, `CF-Connecting-IP`, ...).

Shaped like uvicorn's `middleware/proxy_headers.py`: `TrustedHosts` parses the trusted
addresses and networks once, and the hop lists are read right to left, stopping at the first
address that is not a trusted proxy.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from validator.errors import ConfigurationError
from validator.rules.ips import IPAddress, IPNetwork, parse_ip

# RFC 9110 `token`: what a header field name or a method may be made of.
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED_PAIR = re.compile(r"\\(.)")
_IP_CHARS = frozenset("0123456789abcdefABCDEF.:")
_DOTTED = frozenset("0123456789.")


class TrustedHosts:
    """Proxy addresses and networks, parsed once; `host in trusted` is the call site."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.literals: set[str] = set()
        self.addresses: set[IPAddress] = set()
        self.networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            try:
                if "/" in entry:
                    self.networks.append(ipaddress.ip_network(entry))
                else:
                    address = parse_ip(entry)
                    if address is None:
                        raise ValueError(entry)
                    self.addresses.add(address)
                    self.literals.add(str(address))
            except ValueError:
                raise ConfigurationError(
                    f"trusted proxy {raw!r} is not an IP address or CIDR network (host bits unset)"
                ) from None
        self._v4_networks = any(n.version == 4 for n in self.networks)
        self._trusts = functools.lru_cache(maxsize=1024)(self._compute)

    def __bool__(self) -> bool:
        return bool(self.literals or self.networks)

    def __contains__(self, host: object) -> bool:
        if host in self.literals:
            return True
        if not isinstance(host, str) or not host or len(host) > 64:
            return False
        # A dotted quad that ipaddress accepts is its own canonical form, so without IPv4
        # networks the literal miss already decided; anything else may be another spelling.
        if not self._v4_networks and _DOTTED.issuperset(host):
            return False
        return self._trusts(host)

    def _compute(self, host: str) -> bool:
        address = parse_ip(host)
        if address is None:
            return False
        return address in self.addresses or any(address in net for net in self.networks)

    def client(self, hops: Sequence[str | None]) -> str | None:
        """The client a chain of proxies reports: the rightmost hop we do not trust.

        Each proxy appends the address it saw, so only the hops right of the first untrusted one
        are ours; anything to its left was written by the client. A hop without an address
        (`unknown`, an obfuscated name, garbage) ends the walk with no address. If every hop is
        trusted, the client was one of our proxies: the leftmost hop.
        """
        for host in reversed(hops):
            if host is None or host not in self:
                return host
        return hops[0] if hops else None


def _host_of_node(node: str) -> str | None:
    """The address of one X-Forwarded-For entry or Forwarded `for=` node, without a port."""
    node = node.strip()
    if node.startswith("["):
        end = node.find("]")
        if end == -1:
            return None
        node = node[1:end]
    elif node.count(":") == 1:
        node = node[: node.find(":")]
    if not node or not _IP_CHARS.issuperset(node):
        return None
    return node


# Cached: behind nginx's X-Real-IP every request parsed its address anew, about half of what a
# forward-auth check cost in process (~20 us before, ~9 after on a loaded machine; measured as
# the in-process case of benchmarks/gate.py does). Values come from trusted edges only (the
# client addresses they saw), and the cache is bounded: in entries here, in bytes by its caller,
# which calls `one_address.__wrapped__` for a value longer than 128 (P-PARSE-CACHE-BOUNDED).
@functools.lru_cache(maxsize=4096)
def one_address(value: str) -> str | None:
    """The address in a single-address header (`X-Real-IP`, `CF-Connecting-IP`, ...): the value
    must be exactly one IPv4 or IPv6 address, nothing else (no port, no list); its canonical form."""
    value = value.strip()
    if not value or len(value) > 64 or not _IP_CHARS.issuperset(value):
        return None
    address = parse_ip(value)
    return None if address is None else str(address)


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split at `separator` outside RFC 7230 quoted-strings (which may hide `,` and `;`)."""
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _forwarded_for(element: str) -> str | None:
    """The address in one RFC 7239 `Forwarded` element's `for=` parameter, or None."""
    found: str | None = None
    for pair in _split_unquoted(element, ";"):
        name, eq, value = pair.partition("=")
        if not eq or name.strip().lower() != "for":
            continue
        if found is not None:
            return None  # RFC 7239 section 4: a parameter occurs at most once per element.
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                return None
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        found = value
    return None if found is None else _host_of_node(found)


def x_forwarded_for_hops(value: str) -> list[str | None]:
    return [_host_of_node(node) for node in value.split(",")]


def forwarded_hops(value: str) -> list[str | None]:
    return [_forwarded_for(element) for element in _split_unquoted(value, ",")]
