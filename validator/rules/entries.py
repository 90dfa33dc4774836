"""Admin-side normalisation of domain entries: canonical forms, qualifiers, public suffixes.

Runs when restrictions are written: strict, and explains every refusal (`InvalidEntry`).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import idna

from validator.errors import InvalidEntry

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList
from validator.rules.domains import _split_entry
from validator.rules.ips import parse_ip
from validator.rules.request import DEFAULT_PORTS, MAX_HOST_LENGTH, MAX_URL_LENGTH, authority, is_hostname

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
def public_suffixes() -> PublicSuffixList:
    """The Public Suffix List (private section included), loaded once."""
    # Imported here: loading the list takes ~60 ms, and only the admin side needs it.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_unknown=False)


def _public_suffix_refusal(entry: str, stored: str) -> str | None:
    """Why a stored domain entry would admit sites nobody vouches for, or None.

    docs/behaviour.md: no wildcard directly over a public suffix (the Public Suffix List, private section
    included), where anyone can register a site. The list's default rule makes a top-level
    domain it does not know a public suffix too (one delegated after the shipped list was cut),
    except the special-use names. A plain entry that is a public suffix is refused as well:
    nobody owns `com` or `github.io` as a site.
    """
    pattern, _ = _split_entry(stored)
    wildcard = pattern.startswith("*.")
    host = pattern[2:] if wildcard else pattern
    listed = public_suffixes().is_public(host)
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
    as docs/behaviour.md says (`https://Example.com/path` stores `example.com`), and the note says so;
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
    host_start, end = authority(rest, 0)
    pasted_url = rest[end:] not in ("", "/")
    if pasted_url:
        dropped.append("path")
    if host_start:
        pasted_url = True
        dropped.append("user information")
    authority_text = rest[host_start:end]
    if authority_text.startswith("["):
        raise InvalidEntry(f"{entry!r} is an IP address, not a domain: add it to the IP list instead")
    host, colon, port_text = authority_text.partition(":")
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
        # docs/behaviour.md: a pasted URL stores its host alone; qualifiers come only from an origin.
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


# Ranges that are not a "static public address" (docs/behaviour.md). Documentation ranges (RFC 5737,
# RFC 3849, RFC 9637) are accepted, IPv4 and IPv6 alike: docs/behaviour.md itself uses 203.0.113.7 and
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
