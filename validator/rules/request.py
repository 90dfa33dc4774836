"""Request-side parsing of docs/behaviour.md: the host and origin of an `Origin`/`Referer` value.

Runs on every request: cheap, remembered (the parse memos), and never raises.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import idna

if TYPE_CHECKING:
    pass


# Longer `Origin`/`Referer` values are not parsed at all (they match nothing). Browsers cap
# the Referer at 4 KiB since 2020; hostnames are at most 253 characters.
MAX_URL_LENGTH = 4096
MAX_HOST_LENGTH = 253

# Letters, digits and hyphens per label (RFC 1123), plus `_`, which browsers accept in hosts.
_HOSTNAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
_PORT_DIGITS = frozenset("0123456789")
# docs/behaviour.md, "Origin must be an origin": RFC 3986 section 3.1, scheme = ALPHA *( ALPHA / DIGIT /
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


def authority(text: str, start: int) -> tuple[int, int]:
    """Where the host (and port) of the authority that begins at `start` lies in `text`:
    after the last `@` (userinfo is dropped), up to the first of `/?#\\`, as WHATWG URL parsing
    ends it (`\\` counts as `/` for http and https). The one authority scan of the project:
    request values and admin entries are read alike."""
    end = len(text)
    for delimiter in "/?#\\":
        i = text.find(delimiter, start, end)
        if i != -1:
            end = i
    at = text.rfind("@", start, end)
    return (start if at == -1 else at + 1), end


# The form nearly every browser sends: http(s), a lower-case ASCII host without port or
# userinfo, then nothing or a path, query or fragment without a space or control character.
# One regex answers it in ~0.3 us against ~1.4 us for the general scan below (benchmarks:
# hotpath, distinct Origins); it accepts only values the general scan gives the same host for.
_PLAIN_URL = re.compile(r"https?://([a-z0-9._-]+)(?:[/?#\\][^\x00-\x20\x7f]*)?").fullmatch


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
    plain = _PLAIN_URL(url)
    if plain is not None:
        host: str = plain[1]
        if host[-1] == ".":
            host = host[:-1]
        return host or None
    return _scanned_host(url)


def _scanned_host(url: str) -> str | None:
    """`host_of` for any value up to MAX_URL_LENGTH long: the general scan."""
    scheme = _URL_START.match(url)
    if scheme is None or _NOT_IN_URL.search(url) is not None:
        return None
    start, end = authority(url, scheme.end())
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
# and a dict hit costs a tenth of parsing one (benchmarks: hotpath). Bounded in entries, by
# clearing when full, and in bytes: a value longer than MAX_REMEMBERED is parsed every time and
# never kept (docs/behaviour.md, P-PARSE-CACHE-BOUNDED). 512 holds every Origin (a 253-character
# host with a scheme and a port is at most 267) and most Referers; each memo then keeps at most
# ~_MEMO_SIZE x 0.7 KB (~6 MB), however large and varied the headers a client sends (uvicorn
# with httptools accepts headers of megabytes: 3,000 distinct 100 KB Origins pinned ~300 MB).
_MEMO_SIZE = 8192
MAX_REMEMBERED = 512
T = TypeVar("T")
_AF_INET = socket.AF_INET
_inet_pton = socket.inet_pton
# A miss is a `dict.get` default rather than a caught KeyError: raising and catching one cost
# ~14% of a cached check when every Origin is new (benchmarks: hotpath, distinct values).
_MISSING: Any = object()


def _remembered(parse: Callable[[str], T]) -> Callable[[str], T]:
    memo: dict[str, T] = {}

    def lookup(text: str) -> T:
        value = memo.get(text, _MISSING)
        if value is _MISSING:
            value = parse(text)
            if len(text) <= MAX_REMEMBERED:
                if len(memo) >= _MEMO_SIZE:
                    memo.clear()
                memo[text] = value
        return value  # type: ignore[no-any-return]

    return lookup


# `host_of(url)`, remembered for the values seen most recently.
request_host = _remembered(host_of)

# A token's exact hosts are held as one string, each between two DOMAIN_SEPs, and its exact
# addresses likewise between IP_SEPs (`validator.rules.domains`, `validator.rules.ips`): a
# substring test there is one C call, and one string takes a fifth of the memory of a tuple of
# five (benchmarks: memory). Neither character can be in a host `host_of` gives (control
# characters make a URL malformed) nor in an address; entries holding one are left out.
DOMAIN_SEP = "\n"
IP_SEP = "\t"


# `host_key(url)`'s memo: the hot path (`TokenRules.decide`) reads it inline.
HOST_KEYS: dict[str, str | None] = {}


def host_key(url: str) -> str | None:
    """`host_of(url)` between two DOMAIN_SEPs (what a token's joined hosts hold), or None;
    remembered for the values seen most recently."""
    key = HOST_KEYS.get(url, _MISSING)
    return new_host_key(url) if key is _MISSING else key


def new_host_key(url: str) -> str | None:
    """`host_key(url)` for a `url` not in HOST_KEYS: parsed, then remembered. (The hot path has
    looked it up already: one probe and one call fewer on every new Origin.) A value longer
    than MAX_REMEMBERED is not remembered."""
    host = host_of(url)
    key = None if host is None else f"{DOMAIN_SEP}{host}{DOMAIN_SEP}"
    if len(url) <= MAX_REMEMBERED:
        if len(HOST_KEYS) >= _MEMO_SIZE:
            HOST_KEYS.clear()
        HOST_KEYS[url] = key
    return key


def origin_of(url: str) -> tuple[str, str, int | None] | None:
    """The scheme (lower case), host (as `host_of` gives it) and effective port of an `Origin`
    or `Referer` value, or None if it has no host or its port is not a port number.

    The effective port is the explicit one, else the default of the scheme (80 for http, 443
    for https), else None. Only qualified domain entries need this; never raises.
    """
    host = host_of(url)
    if host is None:
        return None
    found = scheme_and_port(url)
    return None if found is None else (found[0], host, found[1])


def scheme_and_port(url: str) -> tuple[str, int | None] | None:
    """The scheme (lower case) and effective port (see `origin_of`) of an `Origin` or `Referer`
    value whose host parsed; None if its port is not a port number."""
    sep = url.find("://")
    start, end = authority(url, sep + 3)
    scheme = url[:sep].lower()
    colon = url.find(":", start, end)
    port_text = url[colon + 1 : end] if colon != -1 else ""
    if not port_text:
        return scheme, DEFAULT_PORTS.get(scheme)
    if len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return scheme, int(port_text)
