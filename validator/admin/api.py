"""Admin operations on stored restrictions, as a Python API (the CLI is a thin face over it).

Every entry is validated and normalised before anything is written; every refusal is a
`ValidatorError` subclass with a message for a person, and leaves the stored data untouched.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from validator.admin.audit import checked_actor, default_actor, retention_options
from validator.admin.suggest import Suggestion, propose
from validator.errors import ConfigurationError, InvalidEntry, LimitExceeded, StoreNotInitialised
from validator.model import MAX_TOKEN_LENGTH, Mode, RestrictionKind, Restrictions, is_token, token_rule
from validator.rules.entries import Normalized, canonical_domain, normalize_domain
from validator.rules.explain import Explanation, explain
from validator.rules.networks import (
    DEFAULT_MIN_PREFIX_V4,
    DEFAULT_MIN_PREFIX_V6,
    check_min_prefixes,
    ip_removals,
    normalize_ip,
)
from validator.store import DEFAULT_KEY_PREFIX, Kind, ListChange, Store, fingerprint
from validator.store.denial_refs import LOGGED, DenialRef
from validator.store.denials import FoundDenial, FoundDenials

__all__ = [
    "Admin",
    "Change",
    "Explanation",
    "HistoryEntry",
    "ImportLine",
    "PreparedPut",
    "Record",
    "Restriction",
    "RestrictionKind",
    "Suggestion",
]

log = logging.getLogger("validator")

# The former name of `RestrictionKind`, kept for compatibility (CHANGELOG, Unreleased): one letter from
# `Restrictions`, the record.
Restriction = RestrictionKind
_KINDS: dict[str, Kind] = {"domain": "domain", "ip": "ip"}
# The most denial-log entries `suggest` reads: far above what a stream keeps by default (about
# `denial_stream_length`, 1,000), so that it reads the whole stream, yet bounded.
SUGGEST_READ = 100_000
NOTHING_STORED = "nothing is stored for this token: nothing was changed (and no record was created)"


def _pair_last(pair: Mapping[str, str]) -> int:
    """When a summary pair was last seen (ms; 0 if unreadable)."""
    try:
        return int(pair.get("at", "0"))
    except ValueError:
        return 0


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
    enable, disable, mode, put, or expire (entries that had lapsed, taken out at the token's next
    change); `restriction` ("domain"/"ip") and `entries` belong to list and switch changes,
    `mode` ("enforce"/"report") to a mode change and a put, `domain_enabled` ... `ips` to a put
    (a whole record, as import and suggest write it). `actor`: who made the change (None in
    entries recorded before actors were). Every field `lua/write.lua` records is one here, so
    that `history`, `--json` and `--all` show it (tests/integration/test_history_fields.py).
    """

    at: int
    op: str
    version: int
    actor: str | None = None
    restriction: str | None = None
    entries: list[str] = msgspec.field(default_factory=list)
    domain_enabled: bool | None = None
    ip_enabled: bool | None = None
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)
    # mode, put: the mode after the change (report-only lets every request through: an audit
    # must show the switch).
    mode: str | None = None
    # add, set: the instant (ms since the epoch) the entries stop matching; none: permanent.
    # put: per entry.
    expires_at: int | None = None
    domain_expiry: dict[str, int] = msgspec.field(default_factory=dict)
    ip_expiry: dict[str, int] = msgspec.field(default_factory=dict)


class Record(msgspec.Struct, kw_only=True):
    """One token's restrictions as a line of an export file, named by the token's keyed hash
    (tokens are never stored in clear, so an export cannot name them). `domain_expiry` and
    `ip_expiry` (entry -> ms since the epoch) are left out of a line without expiring entries."""

    hash: str
    domain_enabled: bool
    ip_enabled: bool
    domains: list[str]
    ips: list[str]
    mode: Mode = Mode.ENFORCE
    domain_expiry: dict[str, int] | msgspec.UnsetType = msgspec.UNSET
    ip_expiry: dict[str, int] | msgspec.UnsetType = msgspec.UNSET


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
    # Entries that expire: entry (as in `domains` / `ips`) -> ms since the epoch, as export writes.
    domain_expiry: dict[str, int] = msgspec.field(default_factory=dict)
    ip_expiry: dict[str, int] = msgspec.field(default_factory=dict)


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
            stored.domain_expiry,
            stored.ip_expiry,
        ) == (r.domain_enabled, r.ip_enabled, r.domains, r.ips, r.domain_expiry, r.ip_expiry)


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
        actor: str | None = None,
        history_length: int | None = None,
        history_max_age: float | timedelta | str | None = None,
    ) -> None:
        """`min_prefix_v4`/`min_prefix_v6`: the shortest prefix an IP network entry may have
        (docs/behaviour.md: no entry may cover the public at large); `allow_private` does not lift them.

        `actor`: who makes the changes, recorded in each history entry (default:
        `$VALIDATOR_ACTOR`, else `user@host` of this process; see `acting_as`). `history_length`
        (entries kept per token; default `$VALIDATOR_HISTORY_LENGTH`, else 50) and
        `history_max_age` (seconds, a timedelta or "90d"; default `$VALIDATOR_HISTORY_MAX_AGE`,
        else none): the retention each write applies to its token's history, in the same atomic
        step. Raises `ConfigurationError`."""
        check_min_prefixes(min_prefix_v4, min_prefix_v6)
        self.store = store
        self.min_prefix_v4 = min_prefix_v4
        self.min_prefix_v6 = min_prefix_v6
        # Every write of the store carries its write options (`lua/write.lua`): the actor among them.
        store.write_options.update(retention_options(history_length, history_max_age))
        store.write_options["actor"] = default_actor() if actor is None else checked_actor(actor)

    @property
    def actor(self) -> str:
        """Who this admin's changes are recorded as made by."""
        return str(self.store.write_options["actor"])

    def acting_as(self, actor: str) -> Admin:
        """This admin, on the same connections and settings, recording `actor` as the author of
        its changes: for a service that changes restrictions on behalf of its users. Close the
        original, not this one. Raises `ConfigurationError`."""
        acting = copy.copy(self)
        acting.store = copy.copy(self.store)
        acting.store.write_options = {**self.store.write_options, "actor": checked_actor(actor)}
        return acting

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
        actor: str | None = None,
        history_length: int | None = None,
        history_max_age: float | timedelta | str | None = None,
    ) -> Admin:
        """An admin on the store at `url`; use the same `secret` and `key_prefix` as the validators
        (`actor` and the history retention: see `Admin`)."""
        check_min_prefixes(min_prefix_v4, min_prefix_v6)
        # Refused before any connection is made.
        actor = default_actor() if actor is None else checked_actor(actor)
        retention_options(history_length, history_max_age)
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
            actor=actor,
            history_length=history_length,
            history_max_age=history_max_age,
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

    async def _list_op(  # noqa: PLR0917
        self,
        token: str,
        op: ListChange,
        restriction: Restriction,
        entries: Iterable[str],
        normalize: Callable[[str], Normalized],
        expiry: dict[str, str] | None = None,
    ) -> Change:
        token_hash = self._hash(token)
        normalized = _normalize_all(entries, normalize)
        if op in ("add", "remove") and not normalized:
            raise InvalidEntry(f"give at least one {restriction} entry to {op}")
        stored, changed = await self.store.change_entries(
            token_hash, op, restriction, [n.stored for n in normalized], options=expiry
        )
        notes = [f"{n.entry!r}: {n.note}" for n in normalized if n.note]
        return _change(stored, changed, notes)

    async def add_domains(
        self,
        token: str,
        domains: Iterable[str],
        *,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> Change:
        """Add domains (at most `limit` in the list, enforced atomically).

        `expires_at` (an aware datetime) or `expires_in` (a timedelta from the store's clock now)
        makes the entries temporary: they stop matching at that instant in every validator, and
        free their slot. Adding an entry that is already stored sets its expiry anew (without
        either: makes it permanent). A past instant or a duration that is not positive is
        refused (`InvalidEntry`)."""
        expiry = _expiry_options(expires_at, expires_in)
        return await self._list_op(token, "add", "domain", domains, normalize_domain, expiry)

    async def remove_domains(self, token: str, domains: Iterable[str]) -> Change:
        # By syntax alone: an entry stored before a rule existed (`*.com`) stays removable.
        return await self._list_op(token, "remove", "domain", domains, canonical_domain)

    async def set_domains(
        self,
        token: str,
        domains: Iterable[str],
        *,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> Change:
        """Replace the whole domain list (every entry expiring as `add_domains` says, if given)."""
        expiry = _expiry_options(expires_at, expires_in)
        return await self._list_op(token, "set", "domain", domains, normalize_domain, expiry)

    async def clear_domains(self, token: str) -> Change:
        return await self._list_op(token, "set", "domain", (), normalize_domain)

    def _normalize_ip(self, allow_private: bool) -> Callable[[str], Normalized]:
        return functools.partial(
            normalize_ip,
            allow_private=allow_private,
            min_prefix_v4=self.min_prefix_v4,
            min_prefix_v6=self.min_prefix_v6,
        )

    async def add_ips(
        self,
        token: str,
        ips: Iterable[str],
        *,
        allow_private: bool = False,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> Change:
        """Add IP addresses or networks; non-public ranges are refused unless `allow_private`.
        `expires_at` / `expires_in`: as `add_domains`."""
        expiry = _expiry_options(expires_at, expires_in)
        return await self._list_op(token, "add", "ip", ips, self._normalize_ip(allow_private), expiry)

    async def remove_ips(self, token: str, ips: Iterable[str]) -> Change:
        """Remove IP entries however they were typed: `2606:4700:0::1111%eth0` removes
        `2606:4700::1111`, and entries an older version stored as typed go too."""
        # Anything stored may be removed, whatever the rules were when it was stored.
        stored = await self.store.read(self._hash(token))
        removals = ip_removals(ips, stored.ips if stored is not None else ())
        return await self._list_op(token, "remove", "ip", removals, removals.__getitem__)

    async def set_ips(
        self,
        token: str,
        ips: Iterable[str],
        *,
        allow_private: bool = False,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> Change:
        """Replace the whole IP list (every entry expiring as `add_domains` says, if given)."""
        expiry = _expiry_options(expires_at, expires_in)
        return await self._list_op(token, "set", "ip", ips, self._normalize_ip(allow_private), expiry)

    async def clear_ips(self, token: str) -> Change:
        return await self._list_op(token, "set", "ip", (), normalize_ip)

    async def _switch(self, token: str, restriction: str, on: bool) -> Change:
        kind = _KINDS.get(restriction)
        if kind is None:
            raise InvalidEntry(f"unknown restriction {restriction!r}: use 'domain' or 'ip'")
        stored, changed = await self.store.switch(self._hash(token), kind, on)
        return _change(stored, changed)

    async def enable(self, token: str, restriction: Restriction) -> Change:
        """Switch a restriction on; with an empty list it then denies every request of its kind."""
        return await self._switch(token, restriction, True)

    async def disable(self, token: str, restriction: Restriction) -> Change:
        return await self._switch(token, restriction, False)

    async def put(self, token: str, restrictions: Restrictions, *, allow_private: bool = False) -> Change:
        """Store a whole record (as an import does); writes nothing if it is already stored.
        Its `domain_expiry` / `ip_expiry` are written with it; an entry already lapsed is left
        out (a note says so)."""
        token_hash = self._hash(token)
        domains = _normalize_all(restrictions.domains, normalize_domain)
        ips = _normalize_all(restrictions.ips, self._normalize_ip(allow_private))
        notes = [f"{n.entry!r}: {n.note}" for n in (*domains, *ips) if n.note]
        record = _with_expiry(restrictions, domains, ips, notes)
        stored, changed = await self.store.put(token_hash, record, options=_put_options(record))
        return Change(restrictions=stored, changed=changed, notes=notes)

    async def set_mode(self, token: str, mode: Mode | str) -> Change:
        """Switch a token between `enforce` and `report` (report-only: would-be denials are
        logged and counted, and the request is allowed)."""
        try:
            chosen = Mode(mode)
        except ValueError:
            raise InvalidEntry(f"unknown mode {mode!r}: use 'enforce' or 'report'") from None
        stored, changed = await self.store.set_mode(self._hash(token), chosen.value)
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
        changed = await self.store.delete_record(token_hash)
        await self.store.delete_denials(token_hash)
        return changed

    async def denials(self, token: str, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The token's recent denials and would-be denials, newest first (see `validator.denials`)."""
        return await self.store.denials(self._hash(token), since_ms=since_ms, count=count)

    async def find_denial(self, ref: str) -> tuple[DenialRef, FoundDenials]:
        """What an `Access-Denied-Ref` value says (its kind, time, token hash characters) and the
        denial-log entries it names, from any validator's log (see `Store.find_denial`): none
        for a reference of a denial that was never logged (dropped, refused before any check, a
        validator without denial log) or no longer is. Raises `InvalidEntry` when `ref` is no
        reference issued with this store's secret."""
        decoded = self.store.denial_refs.decode(ref)
        if decoded is None:
            raise InvalidEntry(
                "not a denial reference issued with this secret: copy the whole Access-Denied-Ref "
                "value (32 hexadecimal digits), and use the validators' VALIDATOR_SECRET"
            )
        if decoded.kind != LOGGED:
            return decoded, FoundDenials([], [], None)
        return decoded, await self.store.find_denial(decoded)

    async def replay_denial(self, found: FoundDenial, *, unknown_allowed: bool = True) -> Explanation:
        """The request of a logged denial decided again against what is stored for its token
        now, with why. Needs no token: an entry of the token's own stream names its hash; one of
        the unknown-token log only its fingerprint, whose stored record (if one was created
        since) is found by SCAN. The request is rebuilt from what the log keeps: the Origin's
        scheme, host and port (a Referer's path is not kept) or the client address.

        Raises `StoreNotInitialised` as `explain` does, `InvalidEntry` if two stored tokens
        share the fingerprint (then replay with the token: `explain`)."""
        await self._sound_for_explain()
        token_hash = found.token_hash
        if token_hash is None:
            hashes = await self.store.hashes_starting(found.fingerprint)
            if len(hashes) > 1:
                raise InvalidEntry(
                    f"{len(hashes)} stored tokens share the fingerprint {found.fingerprint}: "
                    "give the token to replay the denial"
                )
            token_hash = hashes[0] if hashes else None
        restrictions = None if token_hash is None else await self.store.read(token_hash)
        request = replayed_request(found.entry)
        return explain(
            restrictions,
            origin=request["origin"],
            client_ip=request["client_ip"],
            unknown_allowed=unknown_allowed,
        )

    async def _sound_for_explain(self) -> None:
        state = await self.store.marker_state()
        if state != "ok":
            what = "is marked for another secret"
            if state == "missing":
                what = "has no marker (not initialised, or wiped)"
            raise StoreNotInitialised(
                f"the store {what}: validators fail closed on every uncached check", state=state
            )

    async def suggest(
        self,
        token: str,
        *,
        since: datetime | timedelta | None = None,
        limit: int | None = None,
        allow_private: bool = False,
    ) -> Suggestion:
        """An allowlist learnt from the token's recorded denials and would-be denials (report-only
        mode), from every validator process: see `validator.admin.suggest.propose`. Nothing is
        written (`apply_suggestion` does).

        `since`: only denials at or after this time (a `timedelta`: back from now); `limit`: at
        most this many entries a list (default and maximum: the store's limit); `allow_private`:
        propose non-public addresses too (as `add_ips` stores them). Reads at most what the log
        keeps (about `denial_stream_length` entries, for `denial_ttl` after the last one), and no
        more than SUGGEST_READ entries. Raises `StoreNotInitialised` when the store is not marked
        for this secret (validators then fail closed, whatever is stored).
        """
        token_hash = self._hash(token)
        if limit is None:
            limit = self.store.limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.store.limit:
            raise InvalidEntry(
                f"limit must be from 1 to the store's limit ({self.store.limit}), not {limit!r}"
            )
        await self._require_marker()
        since_ms = 0
        if isinstance(since, timedelta):
            since_ms = int((time.time() - since.total_seconds()) * 1000)
        elif since is not None:
            since_ms = int(since.timestamp() * 1000)
        stored = await self.store.read(token_hash)
        # The token's summary (per client and value, bounded; what the capped stream trimmed
        # included) when it has one; its stream otherwise (written by validators from before).
        found = await self.store.denial_summary(token_hash)
        summary = let_go = None
        if found is not None:
            pairs, clients = found
            summary = [pair for pair in pairs if _pair_last(pair) >= since_ms]
            let_go = {client: evicted for client, (_, evicted) in clients.items() if evicted}
        denials = await self.store.denials(
            token_hash, since_ms=max(0, since_ms), count=SUGGEST_READ, own=found is None
        )
        return propose(
            denials,
            stored,
            limit=limit,
            normalize_ip=self._normalize_ip(allow_private),
            allow_private=allow_private,
            summary=summary,
            let_go=let_go,
        )

    async def learn(self, token: str) -> Change:
        """Start learning the token's allowlist (`suggest`): one write that puts it in report-only
        mode with both restrictions on, its lists kept, so that every request its lists do not
        allow is let through and recorded as a would-be denial. Creates a record if none is stored."""
        current = await self.get(token) or Restrictions()
        record = Restrictions(
            domain_enabled=True,
            ip_enabled=True,
            domains=current.domains,
            ips=current.ips,
            mode=Mode.REPORT,
            # Temporary entries stay temporary (`put` leaves out those already lapsed).
            domain_expiry=current.domain_expiry,
            ip_expiry=current.ip_expiry,
        )
        # What is stored was accepted once (private addresses with allow_private): kept as it is.
        return await self.put(token, record, allow_private=True)

    async def apply_suggestion(self, token: str, suggestion: Suggestion, *, enforce: bool = False) -> Change:
        """Write a suggestion's lists in one atomic `put` (validated and limited as any write);
        `enforce` also switches on each restriction whose list allows some of the traffic seen
        and sets enforce mode, in the same write (`Suggestion.record`).

        Refused (`InvalidEntry`, nothing written) when the token changed since the suggestion was
        made, or when `enforce` would leave both restrictions off (unrestricted)."""
        record = suggestion.record(enforce=enforce)
        if enforce and not (record.domain_enabled or record.ip_enabled):
            raise InvalidEntry(
                "nothing to enforce: no traffic seen would be allowed by the proposal, and enforcing "
                "with both restrictions off leaves the token unrestricted (nothing was changed)"
            )
        current = await self.get(token)
        before = suggestion.stored
        if (current is None) != (before is None) or (
            current is not None and before is not None and current.version != before.version
        ):
            raise InvalidEntry(
                "the token changed since the suggestion was made: suggest again (nothing was changed)"
            )
        return await self.put(token, record, allow_private=suggestion.allow_private)

    async def _require_marker(self) -> None:
        state = await self.store.marker_state()
        if state != "ok":
            what = "is marked for another secret"
            if state == "missing":
                what = "has no marker (not initialised, or wiped)"
            raise StoreNotInitialised(
                f"the store {what}: validators fail closed on every uncached check", state=state
            )

    # -------------------------------------------------------------------------- history, import, export

    def token_hash(self, token: str) -> str:
        """The keyed hash that names the token in the store and in export files."""
        return self._hash(token)

    async def history(self, token: str, count: int = 50, *, since_ms: int = 0) -> list[HistoryEntry]:
        """The token's most recent changes (at most `count`, recorded at or after `since_ms`),
        newest first; the store keeps `history_length` (50) per token. Entries that cannot be
        read (written by hand) are left out."""
        entries = (_history_entry(raw) for raw in await self.store.history(self._hash(token), count))
        return [entry for entry in entries if entry is not None and entry.at >= since_ms]

    async def history_all(self, *, since_ms: int = 0) -> AsyncIterator[tuple[str, HistoryEntry]]:
        """Every token's changes recorded at or after `since_ms`, oldest first across all tokens,
        as (token hash, entry): an audit trail for a SIEM. Memory holds a small tuple per token
        changed since then, not the entries (see `Store.history_since`); not a snapshot."""
        async for token_hash, _, raw in self.store.history_since(since_ms):
            entry = _history_entry(raw)
            if entry is not None:
                yield token_hash, entry

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
        for name, expiries, listed in (
            ("domain", line.domain_expiry, line.domains),
            ("IP", line.ip_expiry, line.ips),
        ):
            for entry, at in expiries.items():
                if entry not in listed:
                    raise InvalidEntry(f"an expiry for {entry!r}, which is not in the {name} list")
                if not 0 < at < 10**15:
                    raise InvalidEntry(f"the expiry of {entry!r} is not an instant in ms since the epoch")
        notes = [f"{n.entry!r}: {n.note}" for n in (*domains, *ips) if n.note]
        record = Restrictions(
            domain_enabled=line.domain_enabled,
            ip_enabled=line.ip_enabled,
            mode=line.mode,
            domain_expiry=line.domain_expiry,
            ip_expiry=line.ip_expiry,
        )
        restrictions = _with_expiry(record, domains, ips, notes)
        restrictions.domains.sort()
        restrictions.ips.sort()
        return PreparedPut(token_hash, restrictions, tuple(notes))

    async def put_many(self, batch: Sequence[PreparedPut], *, restoring: bool = False) -> list[Change]:
        """Write prepared records in one pipelined round trip; each record is atomic, the batch is
        not. A record already stored as it is is left alone (no new version, no history).
        `restoring`: written into an unmarked store (see `restore`, which marks it at the end)."""
        replies = await self.store.put_many(
            [(p.token_hash, p.restrictions) for p in batch],
            marked=not restoring,
            each_options=[_put_options(p.restrictions) for p in batch],
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
            for token_hash, read in zip(batch, await self.store.read_many(batch), strict=True):
                if read is not None:  # deleted since the scan
                    stored = read.active(time.time())  # lapsed entries are not exported
                    yield Record(
                        hash=token_hash,
                        domain_enabled=stored.domain_enabled,
                        ip_enabled=stored.ip_enabled,
                        domains=stored.domains,
                        ips=stored.ips,
                        mode=stored.mode,
                        domain_expiry=stored.domain_expiry or msgspec.UNSET,
                        ip_expiry=stored.ip_expiry or msgspec.UNSET,
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


def replayed_request(entry: Mapping[str, str]) -> dict[str, str | None]:
    """The request a denial-log entry describes, as `explain` takes it (origin, client_ip): a
    front-end request by its recorded origin (or its host, over https), a back-end one by its
    client address; "-" (none seen) as none."""
    seen = entry.get("seen", "-")
    if entry.get("source") == "front_end":
        return {
            "origin": entry.get("origin") or (f"https://{seen}" if seen != "-" else "null"),
            "client_ip": None,
        }
    return {"origin": None, "client_ip": None if seen in ("", "-") else seen}


def _history_entry(raw: str) -> HistoryEntry | None:
    try:
        return msgspec.json.decode(raw, type=HistoryEntry)
    except msgspec.DecodeError:  # ValidationError included
        return None


def _change(stored: Restrictions | None, changed: bool, notes: list[str] | None = None) -> Change:
    if stored is None:
        return Change(restrictions=None, changed=False, notes=[*(notes or ()), NOTHING_STORED])
    return Change(restrictions=stored, changed=changed, notes=notes or [])


# The longest expiry accepted: beyond it an entry is meant to stay (make it permanent).
MAX_EXPIRY = timedelta(days=100 * 366)


def _expiry_options(expires_at: datetime | None, expires_in: timedelta | None) -> dict[str, str] | None:
    """`lua/write.lua`'s options for entries that expire at `expires_at` or `expires_in` from the
    store's clock now (None: permanent). Raises `InvalidEntry` for a past instant, a naive
    datetime, a duration that is not positive, or both given."""
    if expires_at is not None and expires_in is not None:
        raise InvalidEntry("give an expiry instant or a duration, not both (nothing was changed)")
    if expires_in is not None:
        if not isinstance(expires_in, timedelta) or not timedelta(0) < expires_in <= MAX_EXPIRY:
            raise InvalidEntry(
                f"an expiry duration must be positive and at most {MAX_EXPIRY.days} days, "
                f"not {expires_in!s} (nothing was changed)"
            )
        return {"expires_in": str(math.ceil(expires_in / timedelta(milliseconds=1)))}
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or expires_at.utcoffset() is None:
            raise InvalidEntry(
                "an expiry instant needs a time zone, as in 2026-12-31T18:00Z (nothing was changed)"
            )
        at_ms = math.ceil(expires_at.timestamp() * 1000)
        if at_ms <= time.time() * 1000:
            raise InvalidEntry(
                f"the expiry {expires_at.isoformat()} has already passed: "
                "give a later one (nothing was changed)"
            )
        if expires_at - datetime.now(UTC) > MAX_EXPIRY:
            raise InvalidEntry(
                f"an expiry is at most {MAX_EXPIRY.days} days ahead; for longer, add the entry "
                "without one (nothing was changed)"
            )
        return {"expires_at": str(at_ms)}
    return None


def _with_expiry(
    restrictions: Restrictions, domains: Sequence[Normalized], ips: Sequence[Normalized], notes: list[str]
) -> Restrictions:
    """`restrictions` with its entries normalised and their expiries under the stored form, the
    entries already lapsed left out (each with a note)."""
    now_ms = time.time() * 1000
    lists: dict[str, tuple[list[str], dict[str, int]]] = {}
    for name, normalized, given in (
        ("domain", domains, restrictions.domain_expiry),
        ("ip", ips, restrictions.ip_expiry),
    ):
        kept: list[str] = []
        expiry: dict[str, int] = {}
        for n in normalized:
            at = given.get(n.entry, given.get(n.stored))
            if at is not None and at <= now_ms:
                notes.append(f"{n.entry!r}: its expiry has passed, left out")
                continue
            kept.append(n.stored)
            if at is not None:
                expiry[n.stored] = at
        lists[name] = (kept, expiry)
    return msgspec.structs.replace(
        restrictions,
        domains=lists["domain"][0],
        ips=lists["ip"][0],
        domain_expiry=lists["domain"][1],
        ip_expiry=lists["ip"][1],
    )


def _put_options(record: Restrictions) -> dict[str, Any]:
    """`lua/write.lua`'s options for a put: the expiries of the record's entries."""
    if not (record.domain_expiry or record.ip_expiry):
        return {}
    return {
        "expiry": {
            "d": {entry: str(at) for entry, at in record.domain_expiry.items()},
            "i": {entry: str(at) for entry, at in record.ip_expiry.items()},
        }
    }
