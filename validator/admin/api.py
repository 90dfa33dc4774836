"""Admin operations on stored restrictions, as a Python API (the CLI is a thin face over it).

Every entry is validated and normalised before anything is written; every refusal is a
`ValidatorError` subclass with a message for a person, and leaves the stored data untouched.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from typing import Literal

import msgspec

from validator.errors import ConfigurationError, InvalidEntry, LimitExceeded, StoreNotInitialised
from validator.model import MAX_TOKEN_LENGTH, Mode, Restrictions, is_token, token_rule
from validator.rules.entries import Normalized, canonical_domain, normalize_domain
from validator.rules.explain import Explanation, explain
from validator.rules.networks import (
    DEFAULT_MIN_PREFIX_V4,
    DEFAULT_MIN_PREFIX_V6,
    check_min_prefixes,
    ip_removals,
    normalize_ip,
)
from validator.store import DEFAULT_KEY_PREFIX, List, Store, fingerprint

__all__ = [
    "Admin",
    "Change",
    "Explanation",
    "HistoryEntry",
    "ImportLine",
    "PreparedPut",
    "Record",
    "Restriction",
]

log = logging.getLogger("validator")

Restriction = Literal["domain", "ip"]
_LIST: dict[str, List] = {"domain": "d", "ip": "i"}
NOTHING_STORED = "nothing is stored for this token: nothing was changed (and no record was created)"


class Change(msgspec.Struct, kw_only=True):
    """The outcome of one admin write: what is stored now, and what the admin should be told.

    `restrictions` is None when the token has no record: a removal, clear, disable or mode
    change on such a token changes nothing (`changed` False, a note says so) and creates no
    record, for an empty record would make a token that validators deny as unknown unrestricted.
    """

    restrictions: Restrictions | None
    changed: bool
    notes: list[str] = msgspec.field(default_factory=list)


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One recorded change to a token (see `lua/write.lua`): when, what, and the version it made.

    `at` is milliseconds since the epoch on the Redis server's clock; `op` is add, remove, set,
    enable, disable or put; `restriction` ("domain"/"ip") and `entries` belong to list and
    switch changes, `domain_enabled` ... `ips` to a put (a whole record, as import writes it).
    """

    at: int
    op: str
    version: int
    restriction: str | None = None
    entries: list[str] = msgspec.field(default_factory=list)
    domain_enabled: bool | None = None
    ip_enabled: bool | None = None
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)


class Record(msgspec.Struct, kw_only=True):
    """One token's restrictions as a line of an export file, named by the token's keyed hash
    (tokens are never stored in clear, so an export cannot name them)."""

    hash: str
    domain_enabled: bool
    ip_enabled: bool
    domains: list[str]
    ips: list[str]
    mode: Mode = Mode.ENFORCE


class ImportLine(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One line of an import file: exactly one of `token` (hashed on import) or `hash` (as an
    export wrote it, valid under the same secret), and the token's whole record."""

    token: str | None = None
    hash: str | None = None
    domain_enabled: bool = False
    ip_enabled: bool = False
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)
    mode: Mode = Mode.ENFORCE


class PreparedPut(msgspec.Struct, frozen=True):
    """A validated, normalised whole record, ready for `Admin.put_many`."""

    token_hash: str
    restrictions: Restrictions
    notes: tuple[str, ...] = ()

    def same_as(self, stored: Restrictions | None) -> bool:
        """Whether writing this would change nothing in `stored`."""
        r = self.restrictions
        return stored is not None and (
            stored.domain_enabled,
            stored.ip_enabled,
            stored.domains,
            stored.ips,
        ) == (r.domain_enabled, r.ip_enabled, r.domains, r.ips)


# The keyed hash as `Store.token_hash` writes it: 128 bits, base64url without padding.
_TOKEN_HASH = re.compile(r"[A-Za-z0-9_-]{22}")


# An import file repeats entries (one company's domains and networks on many of its tokens);
# normalising each distinct entry once makes prepare() about twice as fast on such files.
@functools.lru_cache(maxsize=65536)
def _cached_domain(entry: str) -> Normalized:
    return normalize_domain(entry)


@functools.lru_cache(maxsize=65536)
def _cached_ip(entry: str, allow_private: bool, min_prefix_v4: int, min_prefix_v6: int) -> Normalized:
    return normalize_ip(
        entry, allow_private=allow_private, min_prefix_v4=min_prefix_v4, min_prefix_v6=min_prefix_v6
    )


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

    def __init__(
        self,
        store: Store,
        *,
        min_prefix_v4: int = DEFAULT_MIN_PREFIX_V4,
        min_prefix_v6: int = DEFAULT_MIN_PREFIX_V6,
    ) -> None:
        """`min_prefix_v4`/`min_prefix_v6`: the shortest prefix an IP network entry may have
        (docs/behaviour.md: no entry may cover the public at large); `allow_private` does not lift them."""
        check_min_prefixes(min_prefix_v4, min_prefix_v6)
        self.store = store
        self.min_prefix_v4 = min_prefix_v4
        self.min_prefix_v6 = min_prefix_v6

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
        min_prefix_v4: int = DEFAULT_MIN_PREFIX_V4,
        min_prefix_v6: int = DEFAULT_MIN_PREFIX_V6,
    ) -> Admin:
        """An admin on the store at `url`; use the same `secret` and `key_prefix` as the validators."""
        check_min_prefixes(min_prefix_v4, min_prefix_v6)
        return cls(
            Store.from_url(
                url,
                secret=secret,
                key_prefix=key_prefix,
                limit=limit,
                timeout=timeout,
                connect_timeout=connect_timeout,
            ),
            min_prefix_v4=min_prefix_v4,
            min_prefix_v6=min_prefix_v6,
        )

    async def close(self) -> None:
        await self.store.close()

    def fingerprint(self, token: str) -> str:
        """The short name under which this token appears in logs and output."""
        return fingerprint(self.store.token_hash(token))

    def _hash(self, token: str) -> str:
        if not token:
            raise InvalidEntry("the token must not be empty")
        if not is_token(token, MAX_TOKEN_LENGTH):
            # docs/behaviour.md: anything else was never issued, and validators refuse it before any look-up.
            raise InvalidEntry(f"{token_rule(MAX_TOKEN_LENGTH)}; this one is not, and validators refuse it")
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
        return _change(stored, changed, notes)

    async def add_domains(self, token: str, domains: Iterable[str]) -> Change:
        """Add domains (at most `limit` in the list, enforced atomically)."""
        return await self._list_op(token, "add", "domain", domains, normalize_domain)

    async def remove_domains(self, token: str, domains: Iterable[str]) -> Change:
        # By syntax alone: an entry stored before a rule existed (`*.com`) stays removable.
        return await self._list_op(token, "remove", "domain", domains, canonical_domain)

    async def set_domains(self, token: str, domains: Iterable[str]) -> Change:
        """Replace the whole domain list."""
        return await self._list_op(token, "set", "domain", domains, normalize_domain)

    async def clear_domains(self, token: str) -> Change:
        return await self._list_op(token, "set", "domain", (), normalize_domain)

    def _normalize_ip(self, allow_private: bool) -> Callable[[str], Normalized]:
        return functools.partial(
            normalize_ip,
            allow_private=allow_private,
            min_prefix_v4=self.min_prefix_v4,
            min_prefix_v6=self.min_prefix_v6,
        )

    async def add_ips(self, token: str, ips: Iterable[str], *, allow_private: bool = False) -> Change:
        """Add IP addresses or networks; non-public ranges are refused unless `allow_private`."""
        return await self._list_op(token, "add", "ip", ips, self._normalize_ip(allow_private))

    async def remove_ips(self, token: str, ips: Iterable[str]) -> Change:
        """Remove IP entries however they were typed: `2606:4700:0::1111%eth0` removes
        `2606:4700::1111`, and entries an older version stored as typed go too."""
        # Anything stored may be removed, whatever the rules were when it was stored.
        stored = await self.store.read(self._hash(token))
        removals = ip_removals(ips, stored.ips if stored is not None else ())
        return await self._list_op(token, "remove", "ip", removals, removals.__getitem__)

    async def set_ips(self, token: str, ips: Iterable[str], *, allow_private: bool = False) -> Change:
        """Replace the whole IP list."""
        return await self._list_op(token, "set", "ip", ips, self._normalize_ip(allow_private))

    async def clear_ips(self, token: str) -> Change:
        return await self._list_op(token, "set", "ip", (), normalize_ip)

    async def _switch(self, token: str, restriction: str, on: bool) -> Change:
        if restriction not in _LIST:
            raise InvalidEntry(f"unknown restriction {restriction!r}: use 'domain' or 'ip'")
        stored, changed = await self.store.write(
            self._hash(token), "switch", _LIST[restriction], "1" if on else "0"
        )
        return _change(stored, changed)

    async def enable(self, token: str, restriction: Restriction) -> Change:
        """Switch a restriction on; with an empty list it then denies every request of its kind."""
        return await self._switch(token, restriction, True)

    async def disable(self, token: str, restriction: Restriction) -> Change:
        return await self._switch(token, restriction, False)

    async def put(self, token: str, restrictions: Restrictions, *, allow_private: bool = False) -> Change:
        """Store a whole record (as an import does); writes nothing if it is already stored."""
        token_hash = self._hash(token)
        domains = _normalize_all(restrictions.domains, normalize_domain)
        ips = _normalize_all(restrictions.ips, self._normalize_ip(allow_private))
        stored, changed = await self.store.write(
            token_hash,
            *_put_args(restrictions, [n.stored for n in domains], [n.stored for n in ips]),
        )
        notes = [f"{n.entry!r}: {n.note}" for n in (*domains, *ips) if n.note]
        return Change(restrictions=stored, changed=changed, notes=notes)

    async def set_mode(self, token: str, mode: Mode | str) -> Change:
        """Switch a token between `enforce` and `report` (report-only: would-be denials are
        logged and counted, and the request is allowed)."""
        try:
            chosen = Mode(mode)
        except ValueError:
            raise InvalidEntry(f"unknown mode {mode!r}: use 'enforce' or 'report'") from None
        stored, changed = await self.store.write(self._hash(token), "mode", chosen.value)
        return _change(stored, changed)

    async def init(self, *, force: bool = False) -> bool:
        """Mark the store as initialised for this secret; True if it was not marked before.

        Validators fail closed on a store without the marker (taking it for wiped), and admin
        writes are refused there (`StoreNotInitialised`): only `init`, or the end of a `restore`,
        marks a store. Refused (`ConfigurationError`) when Redis may evict keys without a TTL
        (`maxmemory-policy allkeys-*`), unless `force`; logs a warning when that cannot be
        checked. Raises `ConfigurationError` if the store is marked for another secret.
        """
        await self._check_eviction(force)
        return await self.store.write_marker()

    async def _check_eviction(self, force: bool) -> None:
        problem, doubt = await self.store.eviction_risk()
        if problem is not None and not force:
            raise ConfigurationError(f"{problem}; or go ahead anyway with `init --force` (force=True)")
        if problem is not None:
            log.warning("%s (going ahead anyway: forced)", problem)
        if doubt is not None:
            log.warning(doubt)

    async def restore(
        self, batches: Iterable[Sequence[PreparedPut]], *, force: bool = False
    ) -> AsyncGenerator[list[Change], None]:
        """Restore a wiped (or new) store from prepared records, typically an export's: writes
        each batch (yielding its changes), then marks the store after the last record, so that
        validators fail closed until every record is back. A restore that stops early leaves
        the store unmarked: run it again.

        On a store already marked for this secret it is a plain import (and logs a warning).
        Raises `StoreNotInitialised` on a store marked for another secret, `ConfigurationError`
        when Redis may evict keys without a TTL (see `init`), unless `force`.
        """
        state = await self.store.marker_state()
        if state == "mismatch":
            raise self.store.not_initialised(state)
        if state == "ok":
            log.warning("the store is already initialised for this secret: restoring as a plain import")
        else:
            await self._check_eviction(force)
        for batch in batches:
            yield await self.put_many(batch, restoring=state != "ok")
        await self.store.write_marker()

    async def delete(self, token: str) -> bool:
        """Remove everything stored for the token; True if anything was there."""
        token_hash = self._hash(token)
        _, changed = await self.store.write(token_hash, "delete")
        await self.store.delete_denials(token_hash)
        return changed

    async def denials(self, token: str, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The token's recent denials and would-be denials, newest first (see `validator.denials`)."""
        return await self.store.denials(self._hash(token), since_ms=since_ms, count=count)

    # -------------------------------------------------------------------------- history, import, export

    def token_hash(self, token: str) -> str:
        """The keyed hash that names the token in the store and in export files."""
        return self._hash(token)

    async def history(self, token: str, count: int = 50) -> list[HistoryEntry]:
        """The token's most recent changes, newest first (the store keeps the last 50)."""
        entries = await self.store.history(self._hash(token), count)
        return [msgspec.json.decode(entry, type=HistoryEntry) for entry in entries]

    def prepare(self, line: ImportLine, *, allow_private: bool = False) -> PreparedPut:
        """Validate and normalise one import line; nothing is written. Raises `InvalidEntry`."""
        if (line.token is None) == (line.hash is None):
            raise InvalidEntry("give exactly one of 'token' or 'hash'")
        if line.hash is not None:
            if _TOKEN_HASH.fullmatch(line.hash) is None:
                raise InvalidEntry("'hash' is not a token hash as export writes it (22 base64url characters)")
            token_hash = line.hash
        else:
            token_hash = self._hash(line.token or "")
        domains = _normalize_all(line.domains, _cached_domain)
        ips = _normalize_all(
            line.ips, lambda e: _cached_ip(e, allow_private, self.min_prefix_v4, self.min_prefix_v6)
        )
        for name, entries in (("domain", domains), ("IP", ips)):
            if len(entries) > self.store.limit:
                raise InvalidEntry(
                    f"the {name} list allows at most {self.store.limit} entries; "
                    f"the line gives {len(entries)}"
                )
        restrictions = Restrictions(
            domain_enabled=line.domain_enabled,
            ip_enabled=line.ip_enabled,
            domains=sorted(n.stored for n in domains),
            ips=sorted(n.stored for n in ips),
            mode=line.mode,
        )
        notes = tuple(f"{n.entry!r}: {n.note}" for n in (*domains, *ips) if n.note)
        return PreparedPut(token_hash, restrictions, notes)

    async def put_many(self, batch: Sequence[PreparedPut], *, restoring: bool = False) -> list[Change]:
        """Write prepared records in one pipelined round trip; each record is atomic, the batch is
        not. A record already stored as it is is left alone (no new version, no history).
        `restoring`: written into an unmarked store (see `restore`, which marks it at the end)."""
        replies = await self.store.write_many(
            [
                (p.token_hash, _put_args(p.restrictions, p.restrictions.domains, p.restrictions.ips))
                for p in batch
            ],
            marked=not restoring,
        )
        changes: list[Change] = []
        for prepared, reply in zip(batch, replies, strict=True):
            if isinstance(reply, LimitExceeded):
                raise reply
            stored, changed = reply
            changes.append(Change(restrictions=stored, changed=changed, notes=list(prepared.notes)))
        return changes

    async def read_many(self, token_hashes: Sequence[str]) -> list[Restrictions | None]:
        """Many tokens' restrictions by hash, in one pipelined round trip."""
        return await self.store.read_many(token_hashes)

    async def export(self, batch_size: int = 500) -> AsyncIterator[Record]:
        """Every stored token's record, in hash order, read in pipelined batches.

        Each record is one consistent read; the whole is not a snapshot of the store.
        """
        hashes = await self.store.scan_hashes()
        for start in range(0, len(hashes), batch_size):
            batch = hashes[start : start + batch_size]
            for token_hash, stored in zip(batch, await self.store.read_many(batch), strict=True):
                if stored is not None:  # deleted since the scan
                    yield Record(
                        hash=token_hash,
                        domain_enabled=stored.domain_enabled,
                        ip_enabled=stored.ip_enabled,
                        domains=stored.domains,
                        ips=stored.ips,
                        mode=stored.mode,
                    )

    async def explain(
        self,
        token: str,
        *,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
        unknown_allowed: bool = True,
    ) -> Explanation:
        """The decision for such a request, read straight from the store (no cache), with why.

        Raises `StoreNotInitialised` when the store is not marked for this secret: validators
        then fail closed on every check they have not cached, whatever is stored.
        """
        state = await self.store.marker_state()
        if state != "ok":
            what = "is marked for another secret"
            if state == "missing":
                what = "has no marker (not initialised, or wiped)"
            raise StoreNotInitialised(
                f"the store {what}: validators fail closed on every uncached check", state=state
            )
        return explain(
            await self.get(token),
            origin=origin,
            referer=referer,
            sec_fetch=sec_fetch,
            client_ip=client_ip,
            unknown_allowed=unknown_allowed,
        )


def _change(stored: Restrictions | None, changed: bool, notes: list[str] | None = None) -> Change:
    if stored is None:
        return Change(restrictions=None, changed=False, notes=[*(notes or ()), NOTHING_STORED])
    return Change(restrictions=stored, changed=changed, notes=notes or [])


def _put_args(restrictions: Restrictions, domains: Sequence[str], ips: Sequence[str]) -> tuple[str, ...]:
    return (
        "put",
        "1" if restrictions.domain_enabled else "0",
        "1" if restrictions.ip_enabled else "0",
        restrictions.mode.value,
        str(len(domains)),
        *domains,
        *ips,
    )
