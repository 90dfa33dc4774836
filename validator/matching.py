"""Pure matching rules of SPEC.md: hosts of `Origin`/`Referer`, domain and IP entries, the sets.

Two sides meet here. The request side (`host_of`, `DomainSet`, `IPSet`) runs on every request
and must be cheap and never raise. The admin side (`normalize_domain`, `normalize_ip`) runs
when restrictions are written and must be strict and explain every refusal.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import idna

from validator.errors import ConfigurationError, InvalidEntry

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = [
    "DEFAULT_MIN_PREFIX_V4",
    "DEFAULT_MIN_PREFIX_V6",
    "DEFAULT_PORTS",
    "DomainSet",
    "IPSet",
    "Normalized",
    "canonical_domain",
    "canonical_ip",
    "check_min_prefixes",
    "host_of",
    "ip_removals",
    "is_hostname",
    "normalize_domain",
    "normalize_ip",
    "origin_of",
    "parse_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Longer `Origin`/`Referer` values are not parsed at all (they match nothing). Browsers cap
# the Referer at 4 KiB since 2020; hostnames are at most 253 characters.
MAX_URL_LENGTH = 4096
MAX_HOST_LENGTH = 253

# Letters, digits and hyphens per label (RFC 1123), plus `_`, which browsers accept in hosts.
_HOSTNAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
_PORT_DIGITS = frozenset("0123456789")
# SPEC.md, "Origin must be an origin": RFC 3986 section 3.1, scheme = ALPHA *( ALPHA / DIGIT /
# "+" / "-" / "." ), then "://" and the authority (`ht!tp://`, `://x`, `https:x` have no host).
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A browser serialises Origin and Referer without spaces or control characters (the WHATWG URL
# parser strips or percent-encodes them); a value holding one was made by hand and is malformed.
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f]")

# The schemes a domain entry may be qualified with, and the port an entry or request without
# an explicit port has under each (a web origin's default port).
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}


def is_hostname(host: str) -> bool:
    """Whether `host` is a lower-case ASCII hostname without a trailing dot."""
    return len(host) <= MAX_HOST_LENGTH and _HOSTNAME.fullmatch(host) is not None


def host_of(url: str) -> str | None:
    """The normalised host of an `Origin` or `Referer` value, or None if it has none.

    Scheme, userinfo, port, path, query and fragment are dropped: the host is what follows the
    last `@` of the authority (`https://example.com@evil.test/` has host `evil.test`). A value
    without a valid scheme and `://`, or with a space or control character, has none. The
    result is lower case, without a trailing dot, IDNA-encoded; it is not checked to be a valid
    hostname (an exact match against validated entries needs no check; `DomainSet` checks
    before a wildcard match). Never raises.
    """
    if len(url) > MAX_URL_LENGTH:
        return None
    scheme = _URL_START.match(url)
    if scheme is None or _NOT_IN_URL.search(url) is not None:
        return None
    start = scheme.end()
    end = len(url)
    # WHATWG URL parsing ends the authority at any of these; `\` counts as `/` for http(s).
    for delimiter in "/?#\\":
        i = url.find(delimiter, start, end)
        if i != -1:
            end = i
    at = url.rfind("@", start, end)
    if at != -1:
        start = at + 1
    if url.startswith("[", start):
        # An IPv6 literal: it can never equal a hostname entry, so it has no domain.
        return None
    colon = url.find(":", start, end)
    if colon != -1:
        if not _PORT_DIGITS.issuperset(url[colon + 1 : end]):
            return None
        end = colon
    host = url[start:end]
    if host.endswith("."):
        host = host[:-1]
    if not host:
        return None
    if host.isascii():
        return host.lower()
    # Browsers send `Origin` already punycoded; anything else is a hand-made header.
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


# Request-side parses, remembered: a service sees few distinct Origins and client addresses,
# and a dict hit costs a tenth of parsing one (benchmarks: hotpath). Bounded by clearing when
# full, so a flood of distinct values costs memory for at most _MEMO_SIZE of them.
_MEMO_SIZE = 8192
T = TypeVar("T")
_AF_INET = socket.AF_INET
_inet_pton = socket.inet_pton


def _remembered(parse: Callable[[str], T]) -> Callable[[str], T]:
    memo: dict[str, T] = {}

    def lookup(text: str) -> T:
        try:
            return memo[text]
        except KeyError:
            pass
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        value = memo[text] = parse(text)
        return value

    return lookup


# `host_of(url)`, remembered for the values seen most recently.
request_host = _remembered(host_of)


def origin_of(url: str) -> tuple[str, str, int | None] | None:
    """The scheme (lower case), host (as `host_of` gives it) and effective port of an `Origin`
    or `Referer` value, or None if it has no host or its port is not a port number.

    The effective port is the explicit one, else the default of the scheme (80 for http, 443
    for https), else None. Only qualified domain entries need this; never raises.
    """
    host = host_of(url)
    if host is None:
        return None
    sep = url.find("://")
    start = sep + 3
    end = len(url)
    # The same authority as `host_of` finds (a property test holds the two together).
    for delimiter in "/?#\\":
        i = url.find(delimiter, start, end)
        if i != -1:
            end = i
    at = url.rfind("@", start, end)
    if at != -1:
        start = at + 1
    scheme = url[:sep].lower()
    colon = url.find(":", start, end)
    port_text = url[colon + 1 : end] if colon != -1 else ""
    if not port_text:
        return scheme, host, DEFAULT_PORTS.get(scheme)
    if len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return scheme, host, int(port_text)


# Lists hold at most `limit` (5) entries: a tuple of that size is as quick to search as a set
# and takes a fraction of the memory (a 5-entry frozenset is ~730 bytes), which matters with
# 100,000 tokens cached (benchmarks: memory). Larger collections (a raised limit) stay sets.
_SMALL = 8
_NOT_QUALIFIED: dict[str, tuple[Any, ...]] = {}  # shared by every list without qualifiers; never written


def _compact(items: Collection[T]) -> Collection[T]:
    return tuple(items) if len(items) <= _SMALL else frozenset(items)


# A qualified entry's condition on the request: (scheme or None for any, port or None for any).
_Qualifier = tuple[str | None, int | None]


def _split_entry(entry: str) -> tuple[str, _Qualifier | None]:
    """A stored entry as (host pattern, qualifier), the qualifier None for a bare host."""
    scheme, sep, rest = entry.rpartition("://")
    pattern, colon, port_text = rest.partition(":")
    if not sep and not colon:
        return pattern, None
    if port_text == "*":
        port = None
    elif port_text:
        port = int(port_text)
    else:
        # `https://app.example.com` names one web origin: its port is https's default.
        port = DEFAULT_PORTS.get(scheme)
    return pattern, (scheme or None, port)


class DomainSet:
    """A token's domain list, shaped for O(labels) membership of a request host.

    A bare entry (`example.com`, `*.example.com`) matches on the host alone, any scheme and
    port; `host in domain_set` answers for those. An entry qualified by a scheme and/or a port
    (`https://app.example.com`, `localhost:3000`, `http://localhost:*`) also needs the
    request's scheme and effective port: `matches(host, url)` answers for every entry.
    """

    __slots__ = ("_exact", "_parents", "_qualified_exact", "_qualified_parents", "qualified")

    def __init__(self, entries: Iterable[str]) -> None:
        exact: set[str] = set()
        parents: set[str] = set()
        qualified_exact: dict[str, list[_Qualifier]] = {}
        qualified_parents: dict[str, list[_Qualifier]] = {}
        for entry in entries:
            pattern, qualifier = _split_entry(entry)
            wildcard = pattern.startswith("*.")
            if qualifier is None:
                (parents if wildcard else exact).add(pattern[2:] if wildcard else pattern)
            elif wildcard:
                qualified_parents.setdefault(pattern[2:], []).append(qualifier)
            else:
                qualified_exact.setdefault(pattern, []).append(qualifier)
        self._exact = _compact(exact)
        self._parents = _compact(parents)
        self._qualified_exact = {h: tuple(q) for h, q in qualified_exact.items()} or _NOT_QUALIFIED
        self._qualified_parents = {h: tuple(q) for h, q in qualified_parents.items()} or _NOT_QUALIFIED
        self.qualified = bool(qualified_exact or qualified_parents)
        """Whether any entry is qualified by a scheme or port (so `matches` needs the URL)."""

    def __contains__(self, host: object) -> bool:
        """Whether `host` matches a bare entry (one without scheme or port)."""
        if host in self._exact:
            return True
        if not self._parents or not isinstance(host, str):
            return False
        return _under(host, self._parents) is not None

    def matches(self, host: str, url: str) -> bool:
        """Whether a request whose `Origin`/`Referer` is `url`, with host `host_of(url)`, is listed."""
        if host in self:
            return True
        if not self.qualified:
            return False
        qualifiers = self._qualified_exact.get(host, ())
        if self._qualified_parents:
            parent = _under(host, self._qualified_parents)
            if parent is not None:
                qualifiers = (*qualifiers, *self._qualified_parents[parent])
        if not qualifiers:
            return False
        origin = origin_of(url)
        if origin is None:
            return False
        scheme, _, port = origin
        return any((s is None or s == scheme) and (p is None or p == port) for s, p in qualifiers)

    def __len__(self) -> int:
        return (
            len(self._exact)
            + len(self._parents)
            + sum(map(len, self._qualified_exact.values()))
            + sum(map(len, self._qualified_parents.values()))
        )


def _under(host: str, parents: Collection[str]) -> str | None:
    """The listed parent domain `host` is a subdomain of, if `host` is a real hostname."""
    # `*.example.com` matches `a.example.com` and `a.b.example.com`, never `example.com`.
    dot = host.find(".")
    while dot != -1:
        parent = host[dot + 1 :]
        if parent in parents:
            return parent if is_hostname(host) else None
        dot = host.find(".", dot + 1)
    return None


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


# ----------------------------------------------------------------------------- admin side


class Normalized:
    """An admin entry as it will be stored, with what was changed to get there."""

    __slots__ = ("entry", "note", "stored")

    def __init__(self, entry: str, stored: str, note: str | None) -> None:
        self.entry = entry
        self.stored = stored
        self.note = note

    def __repr__(self) -> str:
        return f"Normalized({self.entry!r} -> {self.stored!r})"


def _encode_hostname(host: str, entry: str) -> str:
    host = host.rstrip(".") if host.endswith(".") and not host.endswith("..") else host
    if not host:
        raise InvalidEntry(f"{entry!r} is not a hostname: it is empty")
    if host.isascii():
        host = host.lower()
        labels = host.split(".")
        for label in labels:
            if label.startswith("xn--"):
                try:
                    idna.decode(label)
                except (idna.IDNAError, UnicodeError) as error:
                    raise InvalidEntry(f"{entry!r} is not a hostname: bad punycode ({error})") from None
    else:
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as error:
            raise InvalidEntry(f"{entry!r} is not a valid internationalised hostname: {error}") from None
    if not is_hostname(host):
        raise InvalidEntry(
            f"{entry!r} is not a hostname: use letters, digits, hyphens and dots "
            f"(labels of 1-63 characters, at most {MAX_HOST_LENGTH} in all)"
        )
    if parse_ip(host) is not None or host.replace(".", "").isdigit():
        raise InvalidEntry(f"{entry!r} is an IP address, not a domain: add it to the IP list instead")
    return host


_PORT = re.compile(r"[0-9]{1,5}")


def _port(text: str, entry: str) -> str:
    if text == "*":
        return text
    if _PORT.fullmatch(text) is None or not 0 < int(text) < 65536:
        raise InvalidEntry(f"{entry!r}: ':' must be followed by a port number (1-65535) or '*' for any port")
    return str(int(text))


# Names that RFC 6761, RFC 6762 and ICANN (`internal`, 2024) reserve: nobody can register a site
# under them, so `*.localhost` opens nothing to the public, unlike an unlisted top-level domain.
_SPECIAL_USE = frozenset({"example", "internal", "invalid", "local", "localhost", "test"})


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # Imported here: loading the list takes ~60 ms, and only the admin side needs it.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_unknown=False)


def _public_suffix_refusal(entry: str, stored: str) -> str | None:
    """Why a stored domain entry would admit sites nobody vouches for, or None.

    SPEC.md: no wildcard directly over a public suffix (the Public Suffix List, private section
    included), where anyone can register a site. The list's default rule makes a top-level
    domain it does not know a public suffix too (one delegated after the shipped list was cut),
    except the special-use names. A plain entry that is a public suffix is refused as well:
    nobody owns `com` or `github.io` as a site.
    """
    pattern, _ = _split_entry(stored)
    wildcard = pattern.startswith("*.")
    host = pattern[2:] if wildcard else pattern
    listed = _public_suffixes().is_public(host)
    if wildcard and (listed or ("." not in host and host not in _SPECIAL_USE)):
        kind = "a public suffix" if listed else "a top-level domain"
        return f"{entry!r} would admit every site under {host}, {kind}: list the exact host"
    if listed:
        return f"{entry!r} is a public suffix, which no single site owns: list the exact host"
    return None


def normalize_domain(entry: str) -> Normalized:
    """Normalise an admin's domain entry to its stored form (`canonical_domain`), refusing a
    public suffix and a wildcard directly over one (`*.com`, `*.co.uk`, `*.github.io`).
    Raises `InvalidEntry` with a reason a person understands.
    """
    result = canonical_domain(entry)
    why = _public_suffix_refusal(entry, result.stored)
    if why is not None:
        raise InvalidEntry(why)
    return result


def canonical_domain(entry: str) -> Normalized:
    """The stored form of an admin's domain entry, by its syntax alone (so that an entry stored
    before a rule of `normalize_domain` existed can still be removed).

    Accepted: `example.com`, `*.example.com`, either optionally qualified by a scheme
    (`https://app.example.com`: http or https only) and/or a port (`localhost:3000`,
    `localhost:*` for any port). A scheme without a port means that scheme's default port, as
    in a web origin; a bare host matches any scheme and port. A whole URL (with a path, query,
    fragment or user information: something pasted from an address bar) keeps its host alone,
    as SPEC.md says (`https://Example.com/path` stores `example.com`), and the note says so;
    to qualify an entry, type the origin itself.
    Raises `InvalidEntry` with a reason a person understands.
    """
    text = entry.strip()
    if not text:
        raise InvalidEntry("an empty string is not a domain")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidEntry(f"domain entry too long ({len(text)} characters)")
    dropped: list[str] = []
    scheme = ""
    rest = text
    sep = text.find("://")
    if sep != -1:
        scheme = text[:sep].lower()
        if scheme not in DEFAULT_PORTS:
            raise InvalidEntry(
                f"{entry!r}: only http:// or https:// may qualify a domain (or give the host alone)"
            )
        rest = text[sep + 3 :]
    elif text.startswith("//"):
        rest = text[2:]
    end = len(rest)
    for delimiter in "/?#\\":
        i = rest.find(delimiter, 0, end)
        if i != -1:
            end = i
    pasted_url = rest[end:] not in ("", "/")
    if pasted_url:
        dropped.append("path")
    authority = rest[:end]
    at = authority.rfind("@")
    if at != -1:
        pasted_url = True
        dropped.append("user information")
        authority = authority[at + 1 :]
    if authority.startswith("["):
        raise InvalidEntry(f"{entry!r} is an IP address, not a domain: add it to the IP list instead")
    host, colon, port_text = authority.partition(":")
    port = _port(port_text, entry) if colon else ""
    if port and port == str(DEFAULT_PORTS.get(scheme)):
        dropped.append(f"port {port}, the default of {scheme}")
        port = ""
    if not host:
        raise InvalidEntry(f"{entry!r} has no hostname")
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise InvalidEntry(
            f"{entry!r}: a wildcard is only allowed as a whole first label, as in *.example.com"
        )
    hint = ""
    if pasted_url and (scheme or port):
        # SPEC.md: a pasted URL stores its host alone; qualifiers come only from an origin.
        dropped.extend(part for part in (scheme and f"scheme {scheme}", port and f"port {port}") if part)
        hint = "; a URL keeps its host only: type an origin such as https://host:8443 to qualify the entry"
        scheme = port = ""
    stored = "".join(
        (
            f"{scheme}://" if scheme else "",
            "*." if wildcard else "",
            _encode_hostname(host, entry),
            f":{port}" if port else "",
        )
    )
    note = None
    if dropped:
        note = f"stored {stored!r} (dropped {', '.join(dropped)}{hint})"
    elif stored != text:
        note = f"stored {stored!r}"
    return Normalized(entry, stored, note)


# Ranges that are not a "static public address" (SPEC.md). Documentation ranges (RFC 5737,
# RFC 3849, RFC 9637) are accepted, IPv4 and IPv6 alike: SPEC.md itself uses 203.0.113.7 and
# 2001:db8::/48 as examples, and they are never routed, so listing one opens nothing.
# `ipaddress.is_private` would refuse them. IPv6 special-purpose ranges (IANA's registry) are
# refused as their IPv4 counterparts are: IETF protocol assignments (192.0.0.0/24; 2001::/23,
# which holds Teredo, benchmarking and ORCHID), benchmarking, and the tunnels whose addresses
# stand for another host (6to4 on both sides, NAT64).
_REFUSED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared carrier-grade NAT space (RFC 6598), not a static public address"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "reserved for IETF protocol assignments"),
    ("192.88.99.0/24", "the deprecated 6to4 relay anycast range (RFC 7526)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "reserved for benchmarking (RFC 2544)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (including broadcast)"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "the NAT64 prefix (RFC 6052): its addresses stand for IPv4 hosts"),
    ("64:ff9b:1::/48", "reserved for local NAT64"),
    ("100::/64", "a discard prefix"),
    ("2001::/23", "reserved for IETF protocol assignments (RFC 2928)"),
    ("2001::/32", "Teredo (RFC 4380): its addresses follow a client's NAT mapping, not a static host"),
    ("2001:2::/48", "reserved for benchmarking (RFC 5180)"),
    ("2001:10::/28", "ORCHID (RFC 4843): identifiers, not routable addresses"),
    ("2001:20::/28", "ORCHIDv2 (RFC 7343): identifiers, not routable addresses"),
    ("2002::/16", "6to4 (RFC 3056, deprecated by RFC 7526): its addresses stand for IPv4 hosts"),
    ("fc00::/7", "private (unique local, RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "reserved (deprecated site-local)"),
    ("ff00::/8", "multicast"),
)

# SPEC.md: networks have a minimum prefix length (a site), so that no entry admits the public
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
            # SPEC.md, "one address, one entry": `%eth0` names an interface of one host, and
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
