"""Edits to one token's record: its domain and IP lists (add, remove, replace, clear, each with an
optional expiry), its switches, its mode, a whole record (`put`), and deleting it.

Every entry is validated and normalised before anything is written; every refusal is a
`ValidatorError` subclass with a message for a person, and leaves the stored data untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from validator.admin.context import AdminContext, Change, change, normalize_all, notes_of
from validator.errors import InvalidEntry
from validator.model import Mode, Restrictions
from validator.rules.entries import Normalized, canonical_domain, normalize_domain
from validator.rules.networks import ip_removals
from validator.store import Expiry, Kind, ListChange

__all__ = [
    "MAX_EXPIRY",
    "change_list",
    "delete",
    "expiry",
    "put",
    "set_mode",
    "switch",
    "with_expiry",
]

# The longest expiry accepted: beyond it an entry is meant to stay (make it permanent).
MAX_EXPIRY = timedelta(days=100 * 366)
_KINDS: dict[str, Kind] = {"domain": "domain", "ip": "ip"}


async def change_list(
    context: AdminContext,
    token: str,
    op: ListChange,
    kind: Kind,
    entries: Iterable[str],
    *,
    allow_private: bool = False,
    expires_at: datetime | None = None,
    expires_in: timedelta | None = None,
) -> Change:
    """Add, remove or replace (`set`; with no entries: clear) the entries of one list.

    Added and set entries are normalised as `kind`'s rules say (non-public IP ranges refused
    unless `allow_private`); removals go by syntax alone, so that an entry stored under older
    rules stays removable, and an IP removal matches however the entry was typed (`ip_removals`)."""
    until = expiry(expires_at, expires_in)
    token_hash = context.token_hash(token)
    normalize: Callable[[str], Normalized]
    if op == "remove" and kind == "ip":
        # Anything stored may be removed, whatever the rules were when it was stored.
        stored = await context.store.read(token_hash)
        removals = ip_removals(entries, stored.ips if stored is not None else ())
        entries, normalize = removals, removals.__getitem__
    elif op == "remove":
        normalize = canonical_domain
    else:
        normalize = normalize_domain if kind == "domain" else context.normalize_ip(allow_private)
    normalized = normalize_all(entries, normalize)
    if op in ("add", "remove") and not normalized:
        raise InvalidEntry(f"give at least one {kind} entry to {op}")
    stored, changed = await context.store.change_entries(
        token_hash, op, kind, [n.stored for n in normalized], expiry=until
    )
    return change(stored, changed, notes_of(normalized))


async def switch(context: AdminContext, token: str, restriction: str, on: bool) -> Change:
    """Switch a restriction ("domain" or "ip") on or off."""
    kind = _KINDS.get(restriction)
    if kind is None:
        raise InvalidEntry(f"unknown restriction {restriction!r}: use 'domain' or 'ip'")
    stored, changed = await context.store.switch(context.token_hash(token), kind, on)
    return change(stored, changed)


async def put(
    context: AdminContext, token: str, restrictions: Restrictions, *, allow_private: bool
) -> Change:
    """Store a whole record, its entries normalised, those already lapsed left out (with a note)."""
    token_hash = context.token_hash(token)
    domains = normalize_all(restrictions.domains, normalize_domain)
    ips = normalize_all(restrictions.ips, context.normalize_ip(allow_private))
    notes = notes_of((*domains, *ips))
    record = with_expiry(restrictions, domains, ips, notes)
    stored, changed = await context.store.put(token_hash, record)
    return Change(restrictions=stored, changed=changed, notes=notes)


async def set_mode(context: AdminContext, token: str, mode: Mode | str) -> Change:
    """Switch a token between `enforce` and `report`."""
    try:
        chosen = Mode(mode)
    except ValueError:
        raise InvalidEntry(f"unknown mode {mode!r}: use 'enforce' or 'report'") from None
    stored, changed = await context.store.set_mode(context.token_hash(token), chosen.value)
    return change(stored, changed)


async def delete(context: AdminContext, token: str) -> bool:
    """Remove the token's record and its denial stream; True if a record was there."""
    token_hash = context.token_hash(token)
    changed = await context.store.delete_record(token_hash)
    await context.store.delete_denials(token_hash)
    return changed


def expiry(expires_at: datetime | None, expires_in: timedelta | None) -> Expiry | None:
    """When entries given `expires_at` or `expires_in` (from the store's clock now) stop matching
    (None: permanent). Raises `InvalidEntry` for a past instant, a naive datetime, a duration that
    is not positive, or both given."""
    if expires_at is not None and expires_in is not None:
        raise InvalidEntry("give an expiry instant or a duration, not both (nothing was changed)")
    if expires_in is not None:
        if not isinstance(expires_in, timedelta) or not timedelta(0) < expires_in <= MAX_EXPIRY:
            raise InvalidEntry(
                f"an expiry duration must be positive and at most {MAX_EXPIRY.days} days, "
                f"not {expires_in!s} (nothing was changed)"
            )
        return Expiry(in_ms=math.ceil(expires_in / timedelta(milliseconds=1)))
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
        return Expiry(at_ms=at_ms)
    return None


def with_expiry(
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
        expiries: dict[str, int] = {}
        for n in normalized:
            at = given.get(n.entry, given.get(n.stored))
            if at is not None and at <= now_ms:
                notes.append(f"{n.entry!r}: its expiry has passed, left out")
                continue
            kept.append(n.stored)
            if at is not None:
                expiries[n.stored] = at
        lists[name] = (kept, expiries)
    return msgspec.structs.replace(
        restrictions,
        domains=lists["domain"][0],
        ips=lists["ip"][0],
        domain_expiry=lists["domain"][1],
        ip_expiry=lists["ip"][1],
    )
