"""`validator-admin` commands for support: denials, init, check (explain a request), history."""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime

import msgspec

from validator.admin.api import Admin, Explanation, replayed_request
from validator.admin.cli.output import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Output,
    _entries,
    _restrictions_json,
    _switch,
    _token,
    _unsound,
    _when,
)
from validator.errors import InvalidEntry, StoreNotInitialised
from validator.model import Restrictions
from validator.store.denial_refs import DROPPED, KINDS, REFUSALS, REFUSED, UNLOGGED, DenialRef
from validator.store.denial_streams import FoundDenials

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since_ms(text: str | None) -> int:
    """`--since`: a duration back from now (`90s`, `15m`, `2h`, `1d`) or an ISO 8601 time."""
    if not text:
        return 0
    match = _DURATION.fullmatch(text.strip())
    if match:
        return int((time.time() - float(match[1]) * _SECONDS[match[2]]) * 1000)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            EXIT_USAGE, f"--since {text!r}: give a duration such as 15m, 2h, 1d, or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _denial_json(entry: dict[str, str]) -> dict[str, object]:
    """An entry as `--json` shows it: the stored fields, its `time` (of its last denial), how many
    denials it holds (`count`: repeats of one request written together are one entry), and
    for several, the time of the first (`first_time`). Not its `tag`, which means something
    only to the process that wrote it (it ties an Access-Denied-Ref to the entry)."""
    shown: dict[str, object] = {k: v for k, v in entry.items() if k != "tag"}
    shown |= {"time": _when(int(entry.get("at", 0))), "count": _count(entry)}
    if "first" in entry:
        shown["first_time"] = _when(int(entry["first"]))
    return shown


def _count(entry: dict[str, str]) -> int:
    return int(entry.get("count", 1))


def _how_many(entries: list[dict[str, str]]) -> str:
    total = sum(_count(e) for e in entries)
    if total == len(entries):
        return f"{len(entries)} most recent denials"
    return f"{len(entries)} most recent entries ({total:,} denials)"


def _with_counts(
    header: tuple[str, ...], rows: list[tuple[str, ...]], entries: list[dict[str, str]]
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The table with a `count` column after the time, when an entry holds several denials
    (repeats of one request merged by the writer); as it was otherwise."""
    if all(_count(e) == 1 for e in entries):
        return header, rows
    counted = [(row[0], f"x{_count(e)}", *row[1:]) for row, e in zip(rows, entries, strict=True)]
    return (header[0], "count", *header[1:]), counted


async def cmd_denials(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    if args.ref is not None:
        if args.token is not None or args.unknown:
            raise CliError(EXIT_USAGE, "--ref finds one denial by itself: give no TOKEN and no --unknown")
        return await _denial_by_ref(admin, args.ref, out)
    if (args.token is None) == (not args.unknown):
        raise CliError(
            EXIT_USAGE,
            "give a TOKEN, --unknown for the denials of tokens without a record, or --ref REF",
        )
    if args.unknown:
        return await _unknown_denials(admin, args, out)
    token = _token(args.token)
    entries = await admin.denials(token, since_ms=_since_ms(args.since), count=args.count)
    name = admin.fingerprint(token)
    if out.json:
        out.data({"token": name, "denials": [_denial_json(e) for e in entries]})
        return EXIT_OK
    if not entries:
        out.line(f"token {name}: no denials recorded" + (f" since {args.since}" if args.since else ""))
        return EXIT_OK
    header, rows = _with_counts(
        ("time", "mode", "source", "seen", "rule"),
        [
            (
                _when(int(e.get("at", 0))),
                "would deny" if e.get("mode") == "report" else "denied",
                e.get("source", "-"),
                e.get("seen", "-"),
                e.get("reason", "-"),
            )
            for e in entries
        ],
        entries,
    )
    out.table(header, rows, title=f"token {name}: {_how_many(entries)}, newest first")
    return EXIT_OK


async def _unknown_denials(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    # Tokens without a record share one capped log, by fingerprint (a token is never stored).
    entries = await admin.store.unknown_denials(since_ms=_since_ms(args.since), count=args.count)
    if out.json:
        out.data({"unknown": True, "denials": [_denial_json(e) for e in entries]})
        return EXIT_OK
    if not entries:
        out.line("no denials of unknown tokens recorded" + (f" since {args.since}" if args.since else ""))
        return EXIT_OK
    header, rows = _with_counts(
        ("time", "token", "mode", "source", "seen", "rule"),
        [
            (
                _when(int(e.get("at", 0))),
                e.get("token", "-"),
                "would deny" if e.get("mode") == "report" else "denied",
                e.get("source", "-"),
                e.get("seen", "-"),
                e.get("reason", "-"),
            )
            for e in entries
        ],
        entries,
    )
    out.table(
        header,
        rows,
        title=f"{_how_many(entries)} of tokens without a record (by fingerprint), newest first",
    )
    return EXIT_OK


def _ref_note(ref: DenialRef, found: FoundDenials) -> str:
    """Why a reference leads to no entry, in words (exactly which denials are never found)."""
    if ref.kind == REFUSED:
        return (
            f"refused before any token was checked: {REFUSALS.get(ref.tag, 'refused')}; nothing "
            "is logged for such requests (no token to file it under)"
        )
    if ref.kind == DROPPED:
        return (
            "not in the log: the validator's denial queue was full (a flood, or the store "
            "down), so the denial was counted as dropped and never written"
        )
    if ref.kind == UNLOGGED:
        return "not in the log: the validator that refused it keeps no denial log (denial_log=False)"
    if not ref.unknown and found.oldest_ms is not None and found.oldest_ms > ref.at_ms:
        return (
            f"not in the log any more: newer denials of the token pushed it out of its capped log "
            f"(the oldest entry left is of {_when(found.oldest_ms)})"
        )
    if ref.unknown:
        return (
            "not in the log: pushed out of the capped unknown-token log by newer denials (a flood "
            "of invented tokens keeps only the newest), expired (denial_ttl), or never written "
            "(the store was unreachable then)"
        )
    return (
        "not in the log: expired (denial_ttl after the token's last denial), or never written "
        "(the store was unreachable then)"
    )


async def _denial_by_ref(admin: Admin, text: str, out: Output) -> int:
    try:
        ref, found = await admin.find_denial(text)
    except InvalidEntry as error:
        # Never repeated: a mistyped argument may be a token.
        raise CliError(EXIT_USAGE, f"--ref: {error}") from None
    shown_ref = "".join(text.split()).replace("-", "").lower()  # as `DenialRefs.decode` read it
    which = "the unknown-token log" if ref.unknown else "its own log"
    token = f"{ref.token}..." if ref.token else "-"
    if out.json:
        out.data(
            {
                "ref": shown_ref,
                "kind": KINDS[ref.kind],
                "time": _when(ref.at_ms),
                "token_hash_starts": ref.token or None,
                "unknown_token": ref.unknown,
                "found": bool(found.matches),
                "denials": [
                    {"token": match.fingerprint} | _denial_json(match.entry) for match in found.matches
                ],
                "note": None if found.matches else _ref_note(ref, found),
            }
        )
        return EXIT_OK
    title = f"Access-Denied-Ref {shown_ref}: {KINDS[ref.kind]} at {_when(ref.at_ms)}"
    if not found.matches:
        out.table(
            (), [("token", token), ("time", _when(ref.at_ms)), ("log", _ref_note(ref, found))], title=title
        )
        return EXIT_OK
    if len(found.matches) > 1:
        out.warn(
            f"{len(found.matches)} entries match this reference (two requests of the token whose "
            "tags collide, 1 in 65,536): one of them is the denial"
        )
    for match in found.matches:
        e = match.entry
        rows = [
            ("token", f"{match.fingerprint} (in {which})"),
            ("time", _when(ref.at_ms)),
            ("mode", "would deny (report-only)" if e.get("mode") == "report" else "denied"),
            ("source", e.get("source", "-")),
            ("seen", e.get("seen", "-")),
            ("origin", e.get("origin") or "-"),
            ("rule", e.get("reason", "-")),
        ]
        if _count(e) > 1:
            rows.append(
                (
                    "repeats",
                    f"one of {_count(e):,} identical requests from {_when(int(e.get('first', 0)))} "
                    f"to {_when(int(e.get('at', 0)))}, logged as one entry",
                )
            )
        out.table((), rows, title=title)
    return EXIT_OK


async def cmd_init(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    created = await admin.init(force=args.force)
    if out.json:
        out.data({"marker": admin.store.marker_key, "created": created})
    elif created:
        out.line(f"initialised: validators now trust this store (marker {admin.store.marker_key!r} written)")
    else:
        out.line(f"already initialised for this secret (marker {admin.store.marker_key!r})")
    return EXIT_OK


async def _replay_ref(admin: Admin, args: argparse.Namespace, out: Output) -> tuple[str, Explanation]:
    """`check --replay REF`: the denial the reference names, decided again (needs no token)."""
    try:
        ref, found = await admin.find_denial(args.replay)
    except InvalidEntry as error:
        raise CliError(EXIT_USAGE, f"--replay: {error}") from None
    if not found.matches:
        raise CliError(EXIT_USAGE, f"--replay: no denial to replay: {_ref_note(ref, found)}")
    match = found.matches[0]
    if args.token is not None and admin.token_hash(_token(args.token))[: len(ref.token)] != ref.token:
        raise CliError(EXIT_USAGE, "--replay: this reference names a denial of another token")
    denial = match.entry
    out.warn(
        f"replaying the denial of {_when(int(denial.get('at', 0)))} "
        f"({denial.get('source')}, {denial.get('seen')}, {denial.get('reason')}), rebuilt from the "
        "log: the Origin's scheme, host and port, or the client address (a Referer's path is not kept)"
    )
    if match.token_hash is None:
        out.warn(
            "the token had no stored record then; the log names it by fingerprint only, so what "
            "is stored now is found by that fingerprint"
        )
    try:
        e = await admin.replay_denial(match, unknown_allowed=not args.deny_unknown)
    except StoreNotInitialised as error:
        raise CliError(EXIT_UNREACHABLE, _unsound(error.state)) from None
    args.ip = replayed_request(denial)["client_ip"]
    return match.fingerprint, e


async def cmd_check(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    if args.replay:
        name, e = await _replay_ref(admin, args, out)
        return _explained(name, e, args, out)
    if args.token is None:
        raise CliError(EXIT_USAGE, "give a TOKEN (or --replay REF with the reference of a denial)")
    token = _token(args.token)
    if args.replay is not None:
        # The last recorded denial, decided again against what is stored now.
        last = await admin.denials(token, count=1)
        if not last:
            raise CliError(EXIT_USAGE, "--replay: no denial is recorded for this token")
        denial = last[0]
        request = replayed_request(denial)
        args.origin, args.referer, args.ip = request["origin"], None, request["client_ip"]
        out.warn(
            f"replaying the denial of {_when(int(denial.get('at', 0)))} "
            f"({denial.get('source')}, {denial.get('seen')}, {denial.get('reason')})"
        )
    try:
        e = await admin.explain(
            token,
            origin=args.origin,
            referer=args.referer,
            sec_fetch=args.sec_fetch,
            client_ip=args.ip,
            unknown_allowed=not args.deny_unknown,
        )
    except StoreNotInitialised as error:
        raise CliError(EXIT_UNREACHABLE, _unsound(error.state)) from None
    return _explained(admin.fingerprint(token), e, args, out)


def _explained(name: str, e: Explanation, args: argparse.Namespace, out: Output) -> int:
    """Show an explanation of the request of `check`; its exit code."""
    if out.json:
        out.data(
            {"token": name} | msgspec.to_builtins(e) | {"restrictions": _restrictions_json(e.restrictions)}
        )
        return EXIT_OK if e.allowed else EXIT_REFUSED
    r = e.restrictions or Restrictions()
    seen = "-"
    if e.domain is not None:
        seen = f"domain {e.domain}" + ("" if e.scheme is None else f" ({e.scheme}, port {e.port})")
    elif e.ip is not None:
        seen = f"IP {e.ip}"
    elif args.ip and e.source.value == "back_end":
        seen = f"{args.ip!r} is not an IP address"
    rows = [
        ("token", f"{name} ({'version ' + str(r.version) if e.restrictions else 'nothing stored'})"),
        ("request", e.classification),
        ("seen", seen),
        ("switches", f"domain {_switch(r.domain_enabled)} [{_entries(r.domains)}], "
         f"ip {_switch(r.ip_enabled)} [{_entries(r.ips)}]"),
        ("rule", f"{e.reason.value}: {e.rule}"),
        ("decision", "allowed" if e.allowed else "denied (403)"),
    ]  # fmt: skip
    out.table((), rows)
    if args.ip and e.source.value == "front_end":
        out.warn("--ip is not used: a front-end request is decided by its domain")
    return EXIT_OK if e.allowed else EXIT_REFUSED
