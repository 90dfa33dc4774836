"""`validator-admin history`: one token's changes and who made them, or every token's as JSON
Lines for a SIEM (`--all`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from validator.admin.api import Admin, HistoryEntry
from validator.admin.cli.output import EXIT_OK, EXIT_USAGE, CliError, Output, _token, _what, _when
from validator.admin.cli.support import _since_ms
from validator.store import fingerprint

_DEFAULT_COUNT = 50


def history_line(token_hash: str, entry: HistoryEntry) -> dict[str, Any]:
    """One change as `history --all` writes it: when (ISO 8601 UTC and ms), the token's
    fingerprint and keyed hash (the export's `hash`: it joins with export lines and is not
    reversible without the secret), the actor, then the change's own fields (empty ones left out)."""
    fields = {k: v for k, v in msgspec.to_builtins(entry).items() if v not in (None, [], {})}
    return {"time": _when(entry.at), "token": fingerprint(token_hash), "hash": token_hash} | fields


async def cmd_history(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    since_ms = _since_ms(args.since)
    if args.all:
        if args.token is not None or args.count is not None:
            raise CliError(EXIT_USAGE, "--all writes every token's changes: give no TOKEN and no --count")
        return await _history_all(admin, since_ms)
    if args.token is None:
        raise CliError(EXIT_USAGE, "give a TOKEN, or --all for every token's changes (JSON Lines)")
    token = _token(args.token)
    count = _DEFAULT_COUNT if args.count is None else args.count
    if count < 1:
        raise CliError(EXIT_USAGE, "--count must be at least 1")
    entries = await admin.history(token, count, since_ms=since_ms)
    name = admin.fingerprint(token)
    if out.json:
        out.data(
            {"token": name, "history": [msgspec.to_builtins(e) | {"time": _when(e.at)} for e in entries]}
        )
        return EXIT_OK
    if not entries:
        since = f" since {args.since}" if args.since else ""
        out.line(f"token {name}: no history{since} (nothing changed, or the token was deleted)")
        return EXIT_OK
    out.table(
        ("time (UTC)", "version", "actor", "change"),
        [(_when(e.at), str(e.version), e.actor or "-", _what(e)) for e in entries],
        title=f"token {name}: {len(entries)} most recent changes, newest first",
    )
    return EXIT_OK


async def _history_all(admin: Admin, since_ms: int) -> int:
    # JSON Lines whatever the output mode: one object per change, oldest first, for a SIEM.
    encoder = msgspec.json.Encoder()
    write = sys.stdout.buffer.write
    async for token_hash, entry in admin.history_all(since_ms=since_ms):
        write(encoder.encode(history_line(token_hash, entry)) + b"\n")
    sys.stdout.buffer.flush()
    return EXIT_OK
