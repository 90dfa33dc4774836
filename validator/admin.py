"""Admin operations on stored restrictions, as a Python API (the CLI is a thin face over it).

Every entry is validated and normalised before anything is written; every refusal is a
`ValidatorError` subclass with a message for a person, and leaves the stored data untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import msgspec

from validator.errors import InvalidEntry
from validator.matching import Normalized, normalize_domain, normalize_ip
from validator.model import Restrictions
from validator.store import DEFAULT_KEY_PREFIX, List, Store, fingerprint

__all__ = ["Admin", "Change", "Restriction"]

Restriction = Literal["domain", "ip"]
_LIST: dict[str, List] = {"domain": "d", "ip": "i"}


class Change(msgspec.Struct, kw_only=True):
    """The outcome of one admin write: what is stored now, and what the admin should be told."""

    restrictions: Restrictions
    changed: bool
    notes: list[str] = msgspec.field(default_factory=list)


def _normalize_all(entries: Iterable[str], normalize: Callable[[str], Normalized]) -> list[Normalized]:
    done: list[Normalized] = []
    problems: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        try:
            result = normalize(entry)
        except InvalidEntry as error:
            problems.append(str(error))
            continue
        if result.stored not in seen:
            seen.add(result.stored)
            done.append(result)
    if problems:
        raise InvalidEntry("; ".join(problems) + " (nothing was changed)")
    return done


class Admin:
    """Reads and writes one store's restrictions. Tokens are hashed before they reach Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    def from_url(
        cls,
        url: str = "memory://",
        *,
        secret: str | bytes | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        limit: int = 5,
        timeout: float = 2.0,
        connect_timeout: float = 2.0,
    ) -> Admin:
        """An admin on the store at `url`; use the same `secret` and `key_prefix` as the validators."""
        return cls(
            Store.from_url(
                url,
                secret=secret,
                key_prefix=key_prefix,
                limit=limit,
                timeout=timeout,
                connect_timeout=connect_timeout,
            )
        )

    async def close(self) -> None:
        await self.store.close()

    def fingerprint(self, token: str) -> str:
        """The short name under which this token appears in logs and output."""
        return fingerprint(self.store.token_hash(token))

    def _hash(self, token: str) -> str:
        if not token:
            raise InvalidEntry("the token must not be empty")
        return self.store.token_hash(token)

    async def get(self, token: str) -> Restrictions | None:
        """The token's stored restrictions, or None when nothing is stored for it."""
        return await self.store.read(self._hash(token))

    async def _list_op(
        self,
        token: str,
        op: str,
        restriction: Restriction,
        entries: Iterable[str],
        normalize: Callable[[str], Normalized],
    ) -> Change:
        token_hash = self._hash(token)
        normalized = _normalize_all(entries, normalize)
        if op in ("add", "remove") and not normalized:
            raise InvalidEntry(f"give at least one {restriction} entry to {op}")
        stored, changed = await self.store.write(
            token_hash, op, _LIST[restriction], *(n.stored for n in normalized)
        )
        notes = [f"{n.entry!r}: {n.note}" for n in normalized if n.note]
        return Change(restrictions=stored, changed=changed, notes=notes)

    async def add_domains(self, token: str, domains: Iterable[str]) -> Change:
        """Add domains (at most `limit` in the list, enforced atomically)."""
        return await self._list_op(token, "add", "domain", domains, normalize_domain)

    async def remove_domains(self, token: str, domains: Iterable[str]) -> Change:
        return await self._list_op(token, "remove", "domain", domains, normalize_domain)

    async def set_domains(self, token: str, domains: Iterable[str]) -> Change:
        """Replace the whole domain list."""
        return await self._list_op(token, "set", "domain", domains, normalize_domain)

    async def clear_domains(self, token: str) -> Change:
        return await self._list_op(token, "set", "domain", (), normalize_domain)

    async def add_ips(self, token: str, ips: Iterable[str], *, allow_private: bool = False) -> Change:
        """Add IP addresses or networks; non-public ranges are refused unless `allow_private`."""
        return await self._list_op(
            token, "add", "ip", ips, lambda e: normalize_ip(e, allow_private=allow_private)
        )

    async def remove_ips(self, token: str, ips: Iterable[str]) -> Change:
        # Anything stored may be removed, including entries once stored with allow_private.
        return await self._list_op(token, "remove", "ip", ips, lambda e: normalize_ip(e, allow_private=True))

    async def set_ips(self, token: str, ips: Iterable[str], *, allow_private: bool = False) -> Change:
        """Replace the whole IP list."""
        return await self._list_op(
            token, "set", "ip", ips, lambda e: normalize_ip(e, allow_private=allow_private)
        )

    async def clear_ips(self, token: str) -> Change:
        return await self._list_op(token, "set", "ip", (), normalize_ip)

    async def _switch(self, token: str, restriction: str, on: bool) -> Change:
        if restriction not in _LIST:
            raise InvalidEntry(f"unknown restriction {restriction!r}: use 'domain' or 'ip'")
        stored, changed = await self.store.write(
            self._hash(token), "switch", _LIST[restriction], "1" if on else "0"
        )
        return Change(restrictions=stored, changed=changed)

    async def enable(self, token: str, restriction: Restriction) -> Change:
        """Switch a restriction on; with an empty list it then denies every request of its kind."""
        return await self._switch(token, restriction, True)

    async def disable(self, token: str, restriction: Restriction) -> Change:
        return await self._switch(token, restriction, False)

    async def put(self, token: str, restrictions: Restrictions, *, allow_private: bool = False) -> Change:
        """Store a whole record (as an import does); writes nothing if it is already stored."""
        token_hash = self._hash(token)
        domains = _normalize_all(restrictions.domains, normalize_domain)
        ips = _normalize_all(restrictions.ips, lambda e: normalize_ip(e, allow_private=allow_private))
        stored, changed = await self.store.write(
            token_hash,
            "put",
            "1" if restrictions.domain_enabled else "0",
            "1" if restrictions.ip_enabled else "0",
            str(len(domains)),
            *(n.stored for n in domains),
            *(n.stored for n in ips),
        )
        notes = [f"{n.entry!r}: {n.note}" for n in (*domains, *ips) if n.note]
        return Change(restrictions=stored, changed=changed, notes=notes)

    async def delete(self, token: str) -> bool:
        """Remove everything stored for the token; True if anything was there."""
        _, changed = await self.store.write(self._hash(token), "delete")
        return changed
