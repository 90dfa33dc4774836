"""Reading the denial log as an admin: a token's recent denials, the entry an `Access-Denied-Ref`
names, and learning an allowlist from them (`learn` puts a token in report-only mode, `suggest`
proposes lists from what it saw, `apply_suggestion` writes them). The proposal itself is pure:
`validator.admin.proposal`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta

from validator.admin import edits
from validator.admin.context import AdminContext, Change
from validator.admin.proposal import Suggestion, propose
from validator.errors import InvalidEntry
from validator.model import Mode, Restrictions
from validator.store.denial_refs import LOGGED, DenialRef
from validator.store.denial_streams import FoundDenials

__all__ = ["SUGGEST_READ", "apply_suggestion", "find_denial", "learn", "suggest"]

# The most denial-log entries `suggest` reads: far above what a stream keeps by default (about
# `denial_stream_length`, 1,000), so that it reads the whole stream, yet bounded.
SUGGEST_READ = 100_000


async def find_denial(context: AdminContext, ref: str) -> tuple[DenialRef, FoundDenials]:
    """What an `Access-Denied-Ref` value says and the log entries it names. Raises `InvalidEntry`
    when `ref` is no reference issued with this store's secret."""
    decoded = context.store.denial_refs.decode(ref)
    if decoded is None:
        raise InvalidEntry(
            "not a denial reference issued with this secret: copy the whole Access-Denied-Ref "
            "value (32 hexadecimal digits), and use the validators' VALIDATOR_SECRET"
        )
    if decoded.kind != LOGGED:
        return decoded, FoundDenials([], [], None)
    return decoded, await context.store.find_denial(decoded)


async def suggest(
    context: AdminContext,
    token: str,
    *,
    since: datetime | timedelta | None,
    limit: int | None,
    allow_private: bool,
) -> Suggestion:
    """An allowlist proposed from the token's denial summary (or stream); nothing is written."""
    store = context.store
    token_hash = context.token_hash(token)
    if limit is None:
        limit = store.limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= store.limit:
        raise InvalidEntry(f"limit must be from 1 to the store's limit ({store.limit}), not {limit!r}")
    await context.require_marker()
    since_ms = 0
    if isinstance(since, timedelta):
        since_ms = int((time.time() - since.total_seconds()) * 1000)
    elif since is not None:
        since_ms = int(since.timestamp() * 1000)
    stored = await store.read(token_hash)
    # The token's summary (per client and value, bounded; what the capped stream trimmed
    # included) when it has one; its stream otherwise (written by validators from before).
    found = await store.denial_summary(token_hash)
    summary = let_go = None
    if found is not None:
        pairs, clients = found
        summary = [pair for pair in pairs if _pair_last(pair) >= since_ms]
        let_go = {client: evicted for client, (_, evicted) in clients.items() if evicted}
    denials = await store.denials(
        token_hash, since_ms=max(0, since_ms), count=SUGGEST_READ, own=found is None
    )
    return propose(
        denials,
        stored,
        limit=limit,
        normalize_ip=context.normalize_ip(allow_private),
        allow_private=allow_private,
        summary=summary,
        let_go=let_go,
    )


async def learn(context: AdminContext, token: str) -> Change:
    """Put the token in report-only mode with both restrictions on, its lists kept (one write)."""
    current = await context.store.read(context.token_hash(token)) or Restrictions()
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
    return await edits.put(context, token, record, allow_private=True)


async def apply_suggestion(
    context: AdminContext, token: str, suggestion: Suggestion, *, enforce: bool
) -> Change:
    """Write a suggestion's lists in one `put`, refused if the token changed since it was made."""
    record = suggestion.record(enforce=enforce)
    if enforce and not (record.domain_enabled or record.ip_enabled):
        raise InvalidEntry(
            "nothing to enforce: no traffic seen would be allowed by the proposal, and enforcing "
            "with both restrictions off leaves the token unrestricted (nothing was changed)"
        )
    current = await context.store.read(context.token_hash(token))
    before = suggestion.stored
    if (current is None) != (before is None) or (
        current is not None and before is not None and current.version != before.version
    ):
        raise InvalidEntry(
            "the token changed since the suggestion was made: suggest again (nothing was changed)"
        )
    return await edits.put(context, token, record, allow_private=suggestion.allow_private)


def _pair_last(pair: Mapping[str, str]) -> int:
    """When a summary pair was last seen (ms; 0 if unreadable)."""
    try:
        return int(pair.get("at", "0"))
    except ValueError:
        return 0
