"""`validator-admin` commands for support: denials, init, check (explain a request), history."""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime

import msgspec

from validator.admin.api import Admin
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
    _what,
    _when,
)
from validator.errors import (
    StoreNotInitialised,
)
from validator.model import Restrictions

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
    for several, the time of the first (`first_time`)."""
    shown: dict[str, object] = {**entry, "time": _when(int(entry.get("at", 0))), "count": _count(entry)}
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
    if (args.token is None) == (not args.unknown):
        raise CliError(EXIT_USAGE, "give a TOKEN, or --unknown for the denials of tokens without a record")
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


async def cmd_init(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    created = await admin.init(force=args.force)
    if out.json:
        out.data({"marker": admin.store.marker_key, "created": created})
    elif created:
        out.line(f"initialised: validators now trust this store (marker {admin.store.marker_key!r} written)")
    else:
        out.line(f"already initialised for this secret (marker {admin.store.marker_key!r})")
    return EXIT_OK


async def cmd_check(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    if args.replay:
        # The last recorded denial, decided again against what is stored now.
        last = await admin.denials(token, count=1)
        if not last:
            raise CliError(EXIT_USAGE, "--replay: no denial is recorded for this token")
        denial = last[0]
        if denial.get("source") == "front_end":
            seen = denial.get("seen", "-")
            args.origin = denial.get("origin") or (f"https://{seen}" if seen != "-" else "null")
            args.referer, args.ip = None, None
        else:
            args.origin = args.referer = None
            args.ip = None if denial.get("seen") in (None, "-") else denial.get("seen")
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
    name = admin.fingerprint(token)
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


async def cmd_history(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    entries = await admin.history(token, args.count)
    name = admin.fingerprint(token)
    if out.json:
        out.data(
            {"token": name, "history": [msgspec.to_builtins(e) | {"time": _when(e.at)} for e in entries]}
        )
        return EXIT_OK
    if not entries:
        out.line(f"token {name}: no history (nothing changed, or the token was deleted)")
        return EXIT_OK
    out.table(
        ("time (UTC)", "version", "change"),
        [(_when(e.at), str(e.version), _what(e)) for e in entries],
        title=f"token {name}: {len(entries)} most recent changes, newest first",
    )
    return EXIT_OK
