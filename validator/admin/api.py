"""The `Admin` API: reads and writes one store's restrictions (the CLI is a thin face over it).

A thin facade: each job lives in a module of its own, over the `AdminContext` this class holds:
`edits` (lists, switches, mode, whole records, delete), `transfer` (import, export, init,
restore), `audit` (history), `denial_review` (denials, references, suggest), `explain`.
A refusal is a `ValidatorError` with a message for a person, and writes nothing (see `edits`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Unpack

from validator.admin import audit, denial_review, edits, transfer
from validator.admin import explain as explaining
from validator.admin.audit import HistoryEntry, checked_actor, default_actor, retention_options
from validator.admin.context import AdminContext, Change
from validator.admin.explain import Explanation, replayed_request
from validator.admin.options import AdminOptions
from validator.admin.proposal import Suggestion
from validator.admin.transfer import ImportLine, PreparedPut, Record
from validator.model import Mode, RestrictionKind, Restrictions
from validator.options import resolved, split
from validator.rules.networks import DEFAULT_MIN_PREFIX_V4, DEFAULT_MIN_PREFIX_V6, check_min_prefixes
from validator.store import Store, StoreOptions, fingerprint
from validator.store.denial_refs import DenialRef
from validator.store.denial_streams import FoundDenial, FoundDenials
from validator.store.options import ADMIN

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
    "replayed_request",
]

# The former name of `RestrictionKind`, kept for compatibility (CHANGELOG, Unreleased): one letter from
# `Restrictions`, the record.
Restriction = RestrictionKind


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
        self._context = AdminContext(store, min_prefix_v4, min_prefix_v6)
        # Every write of the store carries its write options (`lua/write.lua`): the actor among them.
        store.write_options.update(retention_options(history_length, history_max_age))
        store.write_options["actor"] = default_actor() if actor is None else checked_actor(actor)

    @property
    def store(self) -> Store:
        """The store this admin reads and writes."""
        return self._context.store

    @property
    def min_prefix_v4(self) -> int:
        return self._context.min_prefix_v4

    @property
    def min_prefix_v6(self) -> int:
        return self._context.min_prefix_v6

    @property
    def actor(self) -> str:
        """Who this admin's changes are recorded as made by."""
        return str(self.store.write_options["actor"])

    def acting_as(self, actor: str) -> Admin:
        """This admin, on the same connections and settings, recording `actor` as the author of
        its changes: for a service that changes restrictions on behalf of its users. Close the
        original, not this one. Raises `ConfigurationError`."""
        store = copy.copy(self.store)
        store.write_options = {**self.store.write_options, "actor": checked_actor(actor)}
        acting = copy.copy(self)
        acting._context = dataclasses.replace(self._context, store=store)
        return acting

    @classmethod
    def from_url(cls, url: str = "memory://", **options: Unpack[AdminOptions]) -> Admin:
        """An admin on the store at `url`, with the store's options (`StoreOptions`; the admin
        role waits longer: timeouts of 2 s) and the admin's own (`actor`, the history retention,
        the minimum prefixes: see `Admin`); use the same `secret` and `key_prefix` as the
        validators."""
        given = resolved(AdminOptions, options, owner="Admin.from_url", role=ADMIN)
        store_options, settings = split(given, StoreOptions)
        # Refused before any connection is made.
        check_min_prefixes(settings["min_prefix_v4"], settings["min_prefix_v6"])
        actor = settings["actor"]
        settings["actor"] = default_actor() if actor is None else checked_actor(actor)
        retention_options(settings["history_length"], settings["history_max_age"])
        return cls(Store.from_url(url, **store_options), **settings)

    async def close(self) -> None:
        await self.store.close()

    def fingerprint(self, token: str) -> str:
        """The short name under which this token appears in logs and output."""
        return fingerprint(self.store.token_hash(token))

    def token_hash(self, token: str) -> str:
        """The keyed hash that names the token in the store and in export files. Raises
        `InvalidEntry` for what is no token (validators refuse it before any look-up)."""
        return self._context.token_hash(token)

    async def get(self, token: str) -> Restrictions | None:
        """The token's stored restrictions, or None when nothing is stored for it."""
        return await self.store.read(self.token_hash(token))

    # -------------------------------------------------------------------------- edits

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
        return await edits.change_list(
            self._context, token, "add", "domain", domains, expires_at=expires_at, expires_in=expires_in
        )

    async def remove_domains(self, token: str, domains: Iterable[str]) -> Change:
        """Remove domain entries, by syntax alone: an entry stored before a rule existed (`*.com`)
        stays removable."""
        return await edits.change_list(self._context, token, "remove", "domain", domains)

    async def set_domains(
        self,
        token: str,
        domains: Iterable[str],
        *,
        expires_at: datetime | None = None,
        expires_in: timedelta | None = None,
    ) -> Change:
        """Replace the whole domain list (every entry expiring as `add_domains` says, if given)."""
        return await edits.change_list(
            self._context, token, "set", "domain", domains, expires_at=expires_at, expires_in=expires_in
        )

    async def clear_domains(self, token: str) -> Change:
        return await edits.change_list(self._context, token, "set", "domain", ())

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
        return await edits.change_list(
            self._context,
            token,
            "add",
            "ip",
            ips,
            allow_private=allow_private,
            expires_at=expires_at,
            expires_in=expires_in,
        )

    async def remove_ips(self, token: str, ips: Iterable[str]) -> Change:
        """Remove IP entries however they were typed: `2606:4700:0::1111%eth0` removes
        `2606:4700::1111`, and entries an older version stored as typed go too."""
        return await edits.change_list(self._context, token, "remove", "ip", ips)

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
        return await edits.change_list(
            self._context,
            token,
            "set",
            "ip",
            ips,
            allow_private=allow_private,
            expires_at=expires_at,
            expires_in=expires_in,
        )

    async def clear_ips(self, token: str) -> Change:
        return await edits.change_list(self._context, token, "set", "ip", ())

    async def enable(self, token: str, restriction: RestrictionKind) -> Change:
        """Switch a restriction on; with an empty list it then denies every request of its kind."""
        return await edits.switch(self._context, token, restriction, True)

    async def disable(self, token: str, restriction: RestrictionKind) -> Change:
        return await edits.switch(self._context, token, restriction, False)

    async def put(self, token: str, restrictions: Restrictions, *, allow_private: bool = False) -> Change:
        """Store a whole record (as an import does); writes nothing if it is already stored.
        Its `domain_expiry` / `ip_expiry` are written with it; an entry already lapsed is left
        out (a note says so)."""
        return await edits.put(self._context, token, restrictions, allow_private=allow_private)

    async def set_mode(self, token: str, mode: Mode | str) -> Change:
        """Switch a token between `enforce` and `report` (report-only: would-be denials are
        logged and counted, and the request is allowed)."""
        return await edits.set_mode(self._context, token, mode)

    async def delete(self, token: str) -> bool:
        """Remove everything stored for the token; True if anything was there."""
        return await edits.delete(self._context, token)

    # -------------------------------------------------------------------------- transfer

    async def init(self, *, force: bool = False) -> bool:
        """Mark the store as initialised for this secret; True if it was not marked before.

        Validators fail closed on a store without the marker (taking it for wiped), and admin
        writes are refused there (`StoreNotInitialised`): only `init`, or the end of a `restore`,
        marks a store. Refused (`ConfigurationError`) when Redis may evict keys without a TTL
        (`maxmemory-policy allkeys-*`), unless `force`; logs a warning when that cannot be
        checked. Raises `ConfigurationError` if the store is marked for another secret.
        """
        return await transfer.init(self._context, force=force)

    def restore(
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
        return transfer.restore(self._context, batches, force=force)

    def prepare(self, line: ImportLine, *, allow_private: bool = False) -> PreparedPut:
        """Validate and normalise one import line; nothing is written. Raises `InvalidEntry`."""
        return transfer.prepare(self._context, line, allow_private=allow_private)

    async def put_many(self, batch: Sequence[PreparedPut], *, restoring: bool = False) -> list[Change]:
        """Write prepared records in one pipelined round trip; each record is atomic, the batch is
        not. A record already stored as it is is left alone (no new version, no history).
        `restoring`: written into an unmarked store (see `restore`, which marks it at the end)."""
        return await transfer.put_many(self._context, batch, restoring=restoring)

    async def read_many(self, token_hashes: Sequence[str]) -> list[Restrictions | None]:
        """Many tokens' restrictions by hash, in one pipelined round trip."""
        return await self.store.read_many(token_hashes)

    def export(self, batch_size: int = 500) -> AsyncIterator[Record]:
        """Every stored token's record, in hash order, read in pipelined batches.

        Each record is one consistent read; the whole is not a snapshot of the store.
        """
        return transfer.export(self._context, batch_size)

    # -------------------------------------------------------------------------- audit

    async def history(self, token: str, count: int = 50, *, since_ms: int = 0) -> list[HistoryEntry]:
        """The token's most recent changes (at most `count`, recorded at or after `since_ms`),
        newest first; the store keeps `history_length` (50) per token. Entries that cannot be
        read (written by hand) are left out."""
        return await audit.history(self._context, token, count, since_ms=since_ms)

    def history_all(self, *, since_ms: int = 0) -> AsyncIterator[tuple[str, HistoryEntry]]:
        """Every token's changes recorded at or after `since_ms`, oldest first across all tokens,
        as (token hash, entry): an audit trail for a SIEM. Memory holds a small tuple per token
        changed since then, not the entries (see `Store.history_since`); not a snapshot."""
        return audit.history_all(self._context, since_ms=since_ms)

    # -------------------------------------------------------------------------- denials, suggest

    async def denials(self, token: str, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The token's recent denials and would-be denials, newest first (see `validator.denials`)."""
        return await self.store.denials(self.token_hash(token), since_ms=since_ms, count=count)

    async def find_denial(self, ref: str) -> tuple[DenialRef, FoundDenials]:
        """What an `Access-Denied-Ref` value says (its kind, time, token hash characters) and the
        denial-log entries it names, from any validator's log (see `Store.find_denial`): none
        for a reference of a denial that was never logged (dropped, refused before any check, a
        validator without denial log) or no longer is. Raises `InvalidEntry` when `ref` is no
        reference issued with this store's secret."""
        return await denial_review.find_denial(self._context, ref)

    async def replay_denial(self, found: FoundDenial, *, unknown_allowed: bool = True) -> Explanation:
        """The request of a logged denial decided again against what is stored for its token
        now, with why. Needs no token: an entry of the token's own stream names its hash; one of
        the unknown-token log only its fingerprint, whose stored record (if one was created
        since) is found by SCAN. The request is rebuilt from what the log keeps: the Origin's
        scheme, host and port (a Referer's path is not kept) or the client address.

        Raises `StoreNotInitialised` as `explain` does, `InvalidEntry` if two stored tokens
        share the fingerprint (then replay with the token: `explain`)."""
        return await explaining.replay(self._context, found, unknown_allowed=unknown_allowed)

    async def suggest(
        self,
        token: str,
        *,
        since: datetime | timedelta | None = None,
        limit: int | None = None,
        allow_private: bool = False,
    ) -> Suggestion:
        """An allowlist learnt from the token's recorded denials and would-be denials (report-only
        mode), from every validator process: see `validator.admin.proposal.propose`. Nothing is
        written (`apply_suggestion` does).

        `since`: only denials at or after this time (a `timedelta`: back from now); `limit`: at
        most this many entries a list (default and maximum: the store's limit); `allow_private`:
        propose non-public addresses too (as `add_ips` stores them). Reads at most what the log
        keeps (about `denial_stream_length` entries, for `denial_ttl` after the last one), and no
        more than SUGGEST_READ entries. Raises `StoreNotInitialised` when the store is not marked
        for this secret (validators then fail closed, whatever is stored).
        """
        return await denial_review.suggest(
            self._context, token, since=since, limit=limit, allow_private=allow_private
        )

    async def learn(self, token: str) -> Change:
        """Start learning the token's allowlist (`suggest`): one write that puts it in report-only
        mode with both restrictions on, its lists kept, so that every request its lists do not
        allow is let through and recorded as a would-be denial. Creates a record if none is stored."""
        return await denial_review.learn(self._context, token)

    async def apply_suggestion(self, token: str, suggestion: Suggestion, *, enforce: bool = False) -> Change:
        """Write a suggestion's lists in one atomic `put` (validated and limited as any write);
        `enforce` also switches on each restriction whose list allows some of the traffic seen
        and sets enforce mode, in the same write (`Suggestion.record`).

        Refused (`InvalidEntry`, nothing written) when the token changed since the suggestion was
        made, or when `enforce` would leave both restrictions off (unrestricted)."""
        return await denial_review.apply_suggestion(self._context, token, suggestion, enforce=enforce)

    # -------------------------------------------------------------------------- explain

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
        return await explaining.explain_token(
            self._context,
            token,
            origin=origin,
            referer=referer,
            sec_fetch=sec_fetch,
            client_ip=client_ip,
            unknown_allowed=unknown_allowed,
        )
