"""Moving many records at once: an import line checked and normalised (`prepare`), written in
pipelined batches (`put_many`), read back (`read_many`), every record exported, and a store
initialised (`init`) or restored from an export (`restore`)."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence

import msgspec

from validator.admin.context import AdminContext, Change, normalize_all, notes_of
from validator.admin.edits import with_expiry
from validator.errors import ConfigurationError, InvalidEntry, LimitExceeded
from validator.model import Mode, Restrictions
from validator.rules.entries import Normalized, normalize_domain
from validator.rules.networks import normalize_ip

__all__ = ["ImportLine", "PreparedPut", "Record", "export", "init", "prepare", "put_many", "restore"]

log = logging.getLogger("validator")


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


def prepare(context: AdminContext, line: ImportLine, *, allow_private: bool = False) -> PreparedPut:
    """Validate and normalise one import line; nothing is written. Raises `InvalidEntry`."""
    if (line.token is None) == (line.hash is None):
        raise InvalidEntry("give exactly one of 'token' or 'hash'")
    if line.hash is not None:
        if _TOKEN_HASH.fullmatch(line.hash) is None:
            raise InvalidEntry("'hash' is not a token hash as export writes it (22 base64url characters)")
        token_hash = line.hash
    else:
        token_hash = context.token_hash(line.token or "")
    domains = normalize_all(line.domains, _cached_domain)
    ips = normalize_all(
        line.ips, lambda e: _cached_ip(e, allow_private, context.min_prefix_v4, context.min_prefix_v6)
    )
    limit = context.store.limit
    for name, entries in (("domain", domains), ("IP", ips)):
        if len(entries) > limit:
            raise InvalidEntry(
                f"the {name} list allows at most {limit} entries; the line gives {len(entries)}"
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
    notes = notes_of((*domains, *ips))
    record = Restrictions(
        domain_enabled=line.domain_enabled,
        ip_enabled=line.ip_enabled,
        mode=line.mode,
        domain_expiry=line.domain_expiry,
        ip_expiry=line.ip_expiry,
    )
    restrictions = with_expiry(record, domains, ips, notes)
    restrictions.domains.sort()
    restrictions.ips.sort()
    return PreparedPut(token_hash, restrictions, tuple(notes))


async def put_many(
    context: AdminContext, batch: Sequence[PreparedPut], *, restoring: bool = False
) -> list[Change]:
    """Write prepared records in one pipelined round trip (each atomic, the batch not)."""
    replies = await context.store.put_many(
        [(p.token_hash, p.restrictions) for p in batch], marked=not restoring
    )
    changes: list[Change] = []
    for prepared, reply in zip(batch, replies, strict=True):
        if isinstance(reply, LimitExceeded):
            raise reply
        stored, changed = reply
        changes.append(Change(restrictions=stored, changed=changed, notes=list(prepared.notes)))
    return changes


async def export(context: AdminContext, batch_size: int) -> AsyncIterator[Record]:
    """Every stored token's record, in hash order, read in pipelined batches."""
    hashes = await context.store.scan_hashes()
    for start in range(0, len(hashes), batch_size):
        batch = hashes[start : start + batch_size]
        for token_hash, read in zip(batch, await context.store.read_many(batch), strict=True):
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


async def init(context: AdminContext, *, force: bool) -> bool:
    """Mark the store for this secret, after the eviction check; True if it was not marked."""
    await _check_eviction(context, force)
    return await context.store.write_marker()


async def restore(
    context: AdminContext, batches: Iterable[Sequence[PreparedPut]], *, force: bool
) -> AsyncGenerator[list[Change], None]:
    """Write every batch (yielding its changes), then mark the store."""
    state = await context.store.marker_state()
    if state == "mismatch":
        raise context.store.not_initialised(state)
    if state == "ok":
        log.warning("the store is already initialised for this secret: restoring as a plain import")
    else:
        await _check_eviction(context, force)
    for batch in batches:
        yield await put_many(context, batch, restoring=state != "ok")
    await context.store.write_marker()


async def _check_eviction(context: AdminContext, force: bool) -> None:
    problem, doubt = await context.store.eviction_risk()
    if problem is not None and not force:
        raise ConfigurationError(f"{problem}; or go ahead anyway with `init --force` (force=True)")
    if problem is not None:
        log.warning("%s (going ahead anyway: forced)", problem)
    if doubt is not None:
        log.warning(doubt)
