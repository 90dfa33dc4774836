"""A token's domain list shaped for the hot path: `DomainSet` and entry qualifiers."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from validator.rules.request import DEFAULT_PORTS, DOMAIN_SEP, IP_SEP, T, is_hostname, origin_of

# Lists hold at most `limit` (5) entries: a tuple of that size is as quick to search as a set
# and takes a fraction of the memory (a 5-entry frozenset is ~730 bytes), which matters with
# 100,000 tokens cached (benchmarks: memory). Larger collections (a raised limit) stay sets.
_SMALL = 8
_NOT_QUALIFIED: dict[str, tuple[Any, ...]] = {}  # shared by every list without qualifiers; never written


def _compact(items: Collection[T]) -> Collection[T]:
    return tuple(items) if len(items) <= _SMALL else frozenset(items)


def joined(items: Iterable[str], sep: str) -> str:
    """`items` as one string, each between two `sep`s: `sep + x + sep in joined(...)` is membership
    (for an `x` without `sep`). Items holding either separator are left out: no host or address
    holds one, so they match nothing anyway, and kept they would split into entries that do."""
    kept = [item for item in dict.fromkeys(items) if DOMAIN_SEP not in item and IP_SEP not in item]
    return sep + sep.join(kept) + sep if kept else sep


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

    The exact bare hosts are `exact`, joined (`joined`, DOMAIN_SEP): the hot path
    (`TokenRules`) keeps that string alone when `more` is false, and this object otherwise.
    """

    __slots__ = ("_odd", "_parents", "_qualified_exact", "_qualified_parents", "exact", "qualified")

    def __init__(self, entries: Iterable[str]) -> None:
        exact: list[str] = []
        odd: list[str] = []  # exact entries holding a separator: no request host can, see `joined`
        parents: set[str] = set()
        qualified_exact: dict[str, list[_Qualifier]] = {}
        qualified_parents: dict[str, list[_Qualifier]] = {}
        for entry in entries:
            pattern, qualifier = _split_entry(entry)
            wildcard = pattern.startswith("*.")
            if qualifier is None:
                if wildcard:
                    parents.add(pattern[2:])
                else:
                    (odd if DOMAIN_SEP in pattern or IP_SEP in pattern else exact).append(pattern)
            elif wildcard:
                qualified_parents.setdefault(pattern[2:], []).append(qualifier)
            else:
                qualified_exact.setdefault(pattern, []).append(qualifier)
        self.exact = joined(exact, DOMAIN_SEP)
        self._odd = tuple(odd)
        self._parents = _compact(parents)
        self._qualified_exact = {h: tuple(q) for h, q in qualified_exact.items()} or _NOT_QUALIFIED
        self._qualified_parents = {h: tuple(q) for h, q in qualified_parents.items()} or _NOT_QUALIFIED
        self.qualified = bool(qualified_exact or qualified_parents)
        """Whether any entry is qualified by a scheme or port (so `matches` needs the URL)."""

    @property
    def more(self) -> bool:
        """Whether any entry is a wildcard or qualified: `exact` alone does not answer."""
        return bool(self._parents) or self.qualified

    def __contains__(self, host: object) -> bool:
        """Whether `host` matches a bare entry (one without scheme or port)."""
        if not isinstance(host, str):
            return False
        if DOMAIN_SEP in host or IP_SEP in host:
            # No `host_of` result holds one (so `TokenRules` never asks): only an odd entry matches.
            return host in self._odd
        if f"{DOMAIN_SEP}{host}{DOMAIN_SEP}" in self.exact:
            return True
        if not self._parents:
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
            self.exact.count(DOMAIN_SEP)
            - 1
            + len(self._odd)
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
