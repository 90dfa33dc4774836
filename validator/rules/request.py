"""Request-side parsing of docs/behaviour.md: the host and origin of an `Origin`/`Referer` value.

Runs on every request: cheap, remembered (the parse memos), and never raises.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

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
    start, end = authority(url, sep + 3)
    scheme = url[:sep].lower()
    colon = url.find(":", start, end)
    port_text = url[colon + 1 : end] if colon != -1 else ""
    if not port_text:
        return scheme, host, DEFAULT_PORTS.get(scheme)
    if len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return None
    return scheme, host, int(port_text)
