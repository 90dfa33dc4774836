"""`validator-admin`: populate, inspect, explain, import and export token restrictions.

A thin face over `validator.admin.Admin`. Output is a `rich` table on a terminal, plain text when
piped, JSON with `--json`; errors go to stderr with the exit codes of `EXIT_CODES`. A token is
never printed whole: output names it by its fingerprint (see `validator.store.fingerprint`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib.util
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

import msgspec

from validator.admin import Admin, Change, HistoryEntry, ImportLine, PreparedPut
from validator.errors import (
    ConfigurationError,
    InvalidEntry,
    LimitExceeded,
    StoreNotInitialised,
    StoreUnavailable,
)
from validator.matching import DEFAULT_MIN_PREFIX_V4, DEFAULT_MIN_PREFIX_V6
from validator.model import MAX_TOKEN_LENGTH, Mode, Restrictions, is_token, token_rule
from validator.store import DEFAULT_KEY_PREFIX

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CODES = {
    EXIT_OK: "done; for check: the request would be allowed",
    EXIT_REFUSED: "refused input (domain, IP, limit, import line), nothing changed (a removal, "
    "clear, disable or mode on a token with nothing stored), or check: the request would be denied",
    EXIT_USAGE: "usage: bad arguments, settings or store URL, no store given; or a write refused "
    "because the store is not initialised for this secret, or init refused for its eviction policy",
    EXIT_UNREACHABLE: "the store is unreachable or answered with an error, or show/check found it "
    "not initialised (or wiped) or marked for another secret: validators fail closed",
}

PROG = "validator-admin"
_BATCH_SIZE = 500
_NOTES_SHOWN = 20
_EXIT_LINES = "\n".join(
    textwrap.fill(f"  {code}  {meaning}", 96, subsequent_indent="     ")
    for code, meaning in EXIT_CODES.items()
)

EPILOG = f"""\
environment:
  VALIDATOR_STORE_URL   the store, when --store is not given (redis://, rediss://, unix://)
  VALIDATOR_SECRET      key of the token hash; the same as the validators use. Prefer it to
                        --secret, which lands in shell history and process lists.

A TOKEN argument of - reads the token from standard input (one line), so that it stays out of
shell history. Output names a token only by its fingerprint.

exit codes:
{_EXIT_LINES}
"""


class CliError(Exception):
    """An error the command line reports as one line on stderr, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse repeats what it could not parse; on this command line that may be a token.
        if message.startswith("unrecognized arguments"):
            message = "unrecognized arguments (not repeated here: they may hold a token)"
        message = re.sub(r"invalid choice: .*? \(choose", "invalid choice (choose", message)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------ output


def _has_rich() -> bool:
    return importlib.util.find_spec("rich") is not None


class Output:
    """Where results go: JSON, a rich table on a terminal, or plain text for pipes."""

    def __init__(self, *, as_json: bool) -> None:
        self.json = as_json
        # Tables on a terminal need the `cli` extra (rich); without it, the plain text of pipes.
        self.rich = not as_json and sys.stdout.isatty() and _has_rich()

    def data(self, value: Any) -> None:
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")

    def line(self, text: str = "") -> None:
        print(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
        if self.rich:
            from rich.console import Console
            from rich.table import Table
            from rich.text import Text

            # Text(): entries such as "[https://app.example.com]" are data, not rich markup.
            table = Table(
                *headers,
                title=Text(title) if title else None,
                title_justify="left",
                show_header=bool(headers),
            )
            for row in rows:
                table.add_row(*map(Text, row))
            Console().print(table)
            return
        if title:
            print(title)
        shown = [list(headers), *map(list, rows)] if headers else [list(row) for row in rows]
        widths = [max(len(row[n]) for row in shown) for n in range(len(shown[0]))] if shown else []
        for row in shown:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    def warn(self, text: str) -> None:
        print(f"{PROG}: warning: {text}", file=sys.stderr)

    def error(self, code: int, text: str) -> None:
        if self.json:
            sys.stderr.write(msgspec.json.encode({"error": text, "exit": code}).decode() + "\n")
        else:
            print(f"{PROG}: error: {text}", file=sys.stderr)


class _LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


# ------------------------------------------------------------------------------ words


_NAMES = {"domain": "domain", "ip": "IP"}


def _switch(on: bool) -> str:
    return "on" if on else "off"


def _entries(entries: Sequence[str]) -> str:
    return ", ".join(entries) if entries else "-"


def _use(r: Restrictions | None) -> tuple[str, str]:
    """(id, words) of what the token's switches mean, per SPEC.md's decision table."""
    if r is None:
        return (
            "unrestricted",
            "unrestricted: nothing stored (validators set to deny unknown tokens refuse it)",
        )
    if r.domain_enabled and r.ip_enabled:
        return "front_and_back_end", "browsers on the listed domains and servers at the listed IPs"
    if r.domain_enabled:
        return "front_end_only", "front end only: browsers on the listed domains; back-end requests denied"
    if r.ip_enabled:
        return "back_end_only", "back end only: servers at the listed IPs; browser requests denied"
    return "unrestricted", "unrestricted: neither restriction is on"


def _warnings(r: Restrictions | None) -> list[str]:
    if r is None:
        return []
    warnings = []
    if r.domain_enabled and not r.domains:
        warnings.append("the domain restriction is on with an empty list: every browser request is denied")
    if r.ip_enabled and not r.ips:
        warnings.append("the IP restriction is on with an empty list: every back-end request is denied")
    return warnings


def _restrictions_json(r: Restrictions | None) -> dict[str, Any]:
    r = r or Restrictions()
    return {
        "domain_enabled": r.domain_enabled,
        "ip_enabled": r.ip_enabled,
        "domains": r.domains,
        "ips": r.ips,
        "version": r.version,
        "mode": r.mode.value,
    }


def _when(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _what(entry: HistoryEntry) -> str:
    if entry.op in ("enable", "disable"):
        return f"{entry.op} {entry.restriction}"
    if entry.op == "put":
        return (
            f"put: domain {_switch(bool(entry.domain_enabled))} [{_entries(entry.domains)}], "
            f"ip {_switch(bool(entry.ip_enabled))} [{_entries(entry.ips)}]"
        )
    return f"{entry.op} {entry.restriction}: {_entries(entry.entries)}"


# ------------------------------------------------------------------------------ commands


def _token(argument: str) -> str:
    if argument != "-":
        token = argument
    elif sys.stdin.isatty():
        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.readline().rstrip("\r\n")
    if token and not is_token(token, MAX_TOKEN_LENGTH):
        # A usage error, as a mistyped argument: the message names the rule, never the token.
        raise CliError(EXIT_USAGE, f"{token_rule(MAX_TOKEN_LENGTH)}; this one is not (nothing was done)")
    return token


def _unsound(state: str) -> str:
    """What a validator does on a store whose marker is "missing" or "mismatch", and the fix."""
    if state == "mismatch":
        return (
            "store marked for another secret: validators with this secret fail closed on every "
            "uncached check; check VALIDATOR_SECRET (it must be the validators' secret)"
        )
    return (
        "store not initialised (or wiped): validators fail closed on every uncached check; run "
        "`validator-admin init` for a new store, or restore a wiped one from its export with "
        "`validator-admin import --restore FILE`"
    )


async def _require_sound(admin: Admin) -> None:
    # A validator would not answer from such a store: neither may show or check.
    state = await admin.store.marker_state()
    if state != "ok":
        raise CliError(EXIT_UNREACHABLE, _unsound(state))


async def cmd_show(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    await _require_sound(admin)
    stored = await admin.get(token)
    use, words = _use(stored)
    name = admin.fingerprint(token)
    if out.json:
        out.data(
            {"token": name, "stored": stored is not None, "use": use, **_restrictions_json(stored)}
            | {"warnings": _warnings(stored)}
        )
        return EXIT_OK
    r = stored or Restrictions()
    version = f"version {r.version}" if stored is not None else "nothing stored"
    if r.mode is Mode.REPORT:
        words += " [REPORT-ONLY: would-be denials are allowed and logged]"
    out.table(
        ("restriction", "switch", "entries"),
        [
            ("domain", _switch(r.domain_enabled), _entries(r.domains)),
            ("ip", _switch(r.ip_enabled), _entries(r.ips)),
        ],
        title=f"token {name} ({version}): {words}",
    )
    for warning in _warnings(stored):
        out.warn(warning)
    return EXIT_OK


def _nothing_stored(admin: Admin, token: str) -> CliError:
    return CliError(
        EXIT_REFUSED,
        f"token {admin.fingerprint(token)}: nothing is stored for it, so nothing was changed "
        "(and no record was created)",
    )


def _report_change(admin: Admin, token: str, change: Change, restriction: str, out: Output) -> int:
    r = change.restrictions
    if r is None:
        raise _nothing_stored(admin, token)
    name = admin.fingerprint(token)
    if out.json:
        out.data(
            {"token": name, "changed": change.changed, "notes": change.notes}
            | {"restrictions": _restrictions_json(r)}
        )
        return EXIT_OK
    for note in change.notes:
        out.line(note)
    enabled, entries = (r.domain_enabled, r.domains) if restriction == "domain" else (r.ip_enabled, r.ips)
    limit = admin.store.limit
    state = f"version {r.version}" if change.changed else f"unchanged, version {r.version}"
    out.line(
        f"token {name} ({state}): {_NAMES[restriction]} restriction {_switch(enabled)}, "
        f"{len(entries)} of {limit}: {_entries(entries)}"
    )
    if not enabled and entries:
        out.warn(
            f"the {_NAMES[restriction]} restriction is off: "
            f"the list has no effect until `enable TOKEN {restriction}`"
        )
    for warning in _warnings(r):
        out.warn(warning)
    return EXIT_OK


async def cmd_list(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    entries: list[str] = getattr(args, "entries", [])
    private = getattr(args, "allow_private", False)
    if args.restriction == "domain":
        match args.action:
            case "add":
                change = await admin.add_domains(token, entries)
            case "remove":
                change = await admin.remove_domains(token, entries)
            case "set":
                change = await admin.set_domains(token, entries)
            case _:
                change = await admin.clear_domains(token)
    else:
        match args.action:
            case "add":
                change = await admin.add_ips(token, entries, allow_private=private)
            case "remove":
                change = await admin.remove_ips(token, entries)
            case "set":
                change = await admin.set_ips(token, entries, allow_private=private)
            case _:
                change = await admin.clear_ips(token)
    return _report_change(admin, token, change, args.restriction, out)


async def cmd_switch(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    on = args.command == "enable"
    change = await (admin.enable(token, args.which) if on else admin.disable(token, args.which))
    return _report_change(admin, token, change, args.which, out)


async def cmd_delete(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    deleted = await admin.delete(token)
    name = admin.fingerprint(token)
    if out.json:
        out.data({"token": name, "deleted": deleted})
    elif deleted:
        out.line(f"token {name}: deleted its restrictions and history")
    else:
        out.line(f"token {name}: nothing was stored")
    return EXIT_OK


async def cmd_mode(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    change = await admin.set_mode(token, args.mode)
    name = admin.fingerprint(token)
    r = change.restrictions
    if r is None:
        raise _nothing_stored(admin, token)
    if out.json:
        out.data({"token": name, "changed": change.changed, "restrictions": _restrictions_json(r)})
        return EXIT_OK
    state = f"version {r.version}" if change.changed else f"unchanged, version {r.version}"
    words = (
        "report-only: would-be denials are allowed, logged and counted (see `denials`)"
        if r.mode is Mode.REPORT
        else "enforcing: denials get 403"
    )
    out.line(f"token {name} ({state}): {words}")
    return EXIT_OK


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


async def cmd_denials(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    if (args.token is None) == (not args.unknown):
        raise CliError(EXIT_USAGE, "give a TOKEN, or --unknown for the denials of tokens without a record")
    if args.unknown:
        return await _unknown_denials(admin, args, out)
    token = _token(args.token)
    entries = await admin.denials(token, since_ms=_since_ms(args.since), count=args.count)
    name = admin.fingerprint(token)
    if out.json:
        out.data({"token": name, "denials": [e | {"time": _when(int(e.get("at", 0)))} for e in entries]})
        return EXIT_OK
    if not entries:
        out.line(f"token {name}: no denials recorded" + (f" since {args.since}" if args.since else ""))
        return EXIT_OK
    out.table(
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
        title=f"token {name}: {len(entries)} most recent denials, newest first",
    )
    return EXIT_OK


async def _unknown_denials(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    # Tokens without a record share one capped log, by fingerprint (a token is never stored).
    entries = await admin.store.unknown_denials(since_ms=_since_ms(args.since), count=args.count)
    if out.json:
        out.data({"unknown": True, "denials": [e | {"time": _when(int(e.get("at", 0)))} for e in entries]})
        return EXIT_OK
    if not entries:
        out.line("no denials of unknown tokens recorded" + (f" since {args.since}" if args.since else ""))
        return EXIT_OK
    out.table(
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
        title=f"{len(entries)} most recent denials of tokens without a record (by fingerprint), newest first",
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


# ------------------------------------------------------------------------------ import / export


@contextlib.contextmanager
def _opened(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        file = Path(path).open("rb")  # noqa: SIM115 - closed below, after the yield
    except OSError as error:
        raise CliError(EXIT_REFUSED, f"cannot read {path}: {error.strerror}") from None
    with file:
        yield file


def _read_import(
    admin: Admin, path: str, allow_private: bool
) -> tuple[list[PreparedPut], list[str], list[str]]:
    """Every valid record of the file, the problems (one per bad line), and normalisation notes."""
    prepared: list[PreparedPut] = []
    problems: list[str] = []
    notes: list[str] = []
    first_line: dict[str, int] = {}
    decoder = msgspec.json.Decoder(ImportLine)
    with _opened(path) as file:
        for number, raw in enumerate(file, 1):
            if not raw.strip():
                continue
            try:
                record = admin.prepare(decoder.decode(raw), allow_private=allow_private)
            except (msgspec.ValidationError, InvalidEntry) as error:
                problems.append(f"line {number}: {error}")
                continue
            except msgspec.DecodeError as error:
                problems.append(f"line {number}: not valid JSON ({error})")
                continue
            seen = first_line.setdefault(record.token_hash, number)
            if seen != number:
                problems.append(f"line {number}: the same token as line {seen}")
                continue
            prepared.append(record)
            notes.extend(f"line {number}: {note}" for note in record.notes)
    return prepared, problems, notes


@contextlib.contextmanager
def _progress(total: int, show: bool) -> Iterator[Any]:
    if not show or not _has_rich():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("import", total=total)
        yield lambda n: progress.advance(task, n)


async def cmd_import(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    started = time.perf_counter()
    prepared, problems, notes = _read_import(admin, args.file, args.allow_private)
    source = "standard input" if args.file == "-" else args.file
    if problems:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        raise CliError(
            EXIT_REFUSED,
            f"{len(problems)} bad line(s) in {source}: nothing was imported (fix them and run it again)",
        )
    for note in notes[:_NOTES_SHOWN]:
        print(f"{PROG}: {note}", file=sys.stderr)
    if len(notes) > _NOTES_SHOWN:
        print(f"{PROG}: ... and {len(notes) - _NOTES_SHOWN} more entries normalised", file=sys.stderr)
    if args.force and not args.restore:
        raise CliError(EXIT_USAGE, "--force goes with --restore (it lets a restore mark an evicting store)")
    if args.dry_run and not args.restore and (state := await admin.store.marker_state()) != "ok":
        out.warn(f"the import itself would be refused: {_unsound(state)}")
    counts = {"created": 0, "changed": 0, "unchanged": 0}
    batch_size = args.batch_size
    batches = [prepared[start : start + batch_size] for start in range(0, len(prepared), batch_size)]
    show_progress = sys.stderr.isatty() and not out.json and len(prepared) > batch_size
    with _progress(len(prepared), show_progress) as advance:
        async for kinds in _import_kinds(admin, batches, args):
            for kind in kinds:
                counts[kind] += 1
            if advance is not None:
                advance(len(kinds))
    seconds = time.perf_counter() - started
    if out.json:
        out.data(
            {"records": len(prepared), **counts, "dry_run": args.dry_run}
            | {"restore": args.restore, "seconds": round(seconds, 3)}
        )
    elif args.dry_run:
        out.line(
            f"dry run: {len(prepared)} valid records in {source}; would create {counts['created']}, "
            f"change {counts['changed']}, leave {counts['unchanged']} unchanged; nothing was written"
        )
    else:
        rate = len(prepared) / seconds if seconds else 0.0
        done = "restored" if args.restore else "imported"
        marked = "; the store is marked: validators trust it again" if args.restore else ""
        out.line(
            f"{done} {len(prepared)} records from {source} in {seconds:.1f} s ({rate:,.0f}/s): "
            f"{counts['created']} created, {counts['changed']} changed, {counts['unchanged']} unchanged"
            + marked
        )
    return EXIT_OK


async def _import_kinds(
    admin: Admin, batches: Sequence[Sequence[PreparedPut]], args: argparse.Namespace
) -> AsyncIterator[list[str]]:
    """Per batch, what importing each record does: "created", "changed" or "unchanged"."""
    if args.dry_run:
        for batch in batches:
            stored = await admin.read_many([p.token_hash for p in batch])
            yield [
                "created" if current is None else "unchanged" if p.same_as(current) else "changed"
                for p, current in zip(batch, stored, strict=True)
            ]
        return
    # A restore marks the store after its last record, never before: validators fail closed
    # until every record is back.
    writes = admin.restore(batches, force=args.force) if args.restore else _put_batches(admin, batches)
    async for changes in writes:
        yield [
            "unchanged"
            if not change.changed
            else "created"
            if change.restrictions is not None and change.restrictions.version == 1
            else "changed"
            for change in changes
        ]


async def _put_batches(admin: Admin, batches: Sequence[Sequence[PreparedPut]]) -> AsyncIterator[list[Change]]:
    for batch in batches:
        yield await admin.put_many(batch)


async def cmd_export(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    encoder = msgspec.json.Encoder()
    count = 0
    if args.file in (None, "-"):
        async for record in admin.export(args.batch_size):
            sys.stdout.buffer.write(encoder.encode(record) + b"\n")
            count += 1
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(args.file)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as file:
            async for record in admin.export(args.batch_size):
                file.write(encoder.encode(record) + b"\n")
                count += 1
        # Written whole or not at all: a failed export never leaves a truncated file behind.
        partial.replace(target)
    except OSError as error:
        raise CliError(EXIT_REFUSED, f"cannot write {args.file}: {error.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    if out.json:
        out.data({"records": count, "file": args.file})
    else:
        out.line(f"exported {count} records to {args.file}")
    return EXIT_OK


# ------------------------------------------------------------------------------ parser


def _common_options() -> _Parser:
    # SUPPRESS: the options may come before or after the command without one resetting the other.
    common = _Parser(add_help=False)
    group = common.add_argument_group("store and output options (before or after the command)")
    group.add_argument(
        "--store", metavar="URL", default=argparse.SUPPRESS, help="the store (default: $VALIDATOR_STORE_URL)"
    )
    group.add_argument(
        "--secret",
        default=argparse.SUPPRESS,
        help="key of the token hash (default: $VALIDATOR_SECRET, better: this lands in shell history)",
    )
    group.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        default=argparse.SUPPRESS,
        help=f"prefix of every Redis key (default: {DEFAULT_KEY_PREFIX})",
    )
    group.add_argument(
        "--limit", type=int, default=argparse.SUPPRESS, help="entries allowed per list (default: 5)"
    )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help="Redis connect and socket timeout (default: 5)",
    )
    for version, default in (("v4", DEFAULT_MIN_PREFIX_V4), ("v6", DEFAULT_MIN_PREFIX_V6)):
        group.add_argument(
            f"--min-prefix-{version}",
            type=int,
            metavar="N",
            default=argparse.SUPPRESS,
            help=f"shortest prefix of an IP{version} network entry (default: /{default})",
        )
    group.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output for scripts"
    )
    return common


_TOKEN_HELP = "the token, or - to read it from standard input"


def build_parser() -> argparse.ArgumentParser:
    """The `validator-admin` argument parser."""
    common = _common_options()
    parser = _Parser(
        prog=PROG,
        description="Populate, inspect, explain, import and export per-token access restrictions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    mode = command(
        "mode", "switch a token between enforce (deny) and report (allow, but log would-be denials)"
    )
    mode.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)
    mode.add_argument("mode", choices=("enforce", "report"))
    mode.set_defaults(handler=cmd_mode)

    denials = command(
        "denials",
        "show a token's recent denials and would-be denials, newest first; --unknown: those of "
        "tokens without a stored record, by fingerprint",
    )
    denials.add_argument("token", metavar="TOKEN", nargs="?", help=_TOKEN_HELP)
    denials.add_argument(
        "--unknown", action="store_true", help="the shared log of denied tokens that have no stored record"
    )
    denials.add_argument(
        "--since", metavar="WHEN", help="a duration back from now (15m, 2h, 1d) or an ISO time"
    )
    denials.add_argument("-n", "--count", type=int, default=50, help="how many at most (default: 50)")
    denials.set_defaults(handler=cmd_denials)

    init = command(
        "init",
        "mark a new store as initialised for this secret; validators fail closed on a store "
        "without the mark (a wiped Redis), and writes are refused there (restore a wiped store "
        "with import --restore instead); refused when Redis may evict keys (allkeys-*)",
    )
    init.add_argument(
        "--force", action="store_true", help="initialise even if Redis's maxmemory-policy may evict keys"
    )
    init.set_defaults(handler=cmd_init)

    show = command("show", "show a token's switches, lists, mode and version")
    show.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)

    for restriction, plural, example in (("domain", "domains", "DOMAIN"), ("ip", "ips", "IP")):
        group = command(plural, f"change a token's {restriction.replace('ip', 'IP')} list")
        actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
        kinds = (
            ("add", f"add {plural} (at most the limit in the list)", "+"),
            ("remove", f"remove {plural}", "+"),
            ("set", f"replace the whole {restriction.replace('ip', 'IP')} list", "*"),
            ("clear", f"empty the {restriction.replace('ip', 'IP')} list", None),
        )
        for action, help_text, nargs in kinds:
            sub = actions.add_parser(action, help=help_text, description=help_text, parents=[common])
            sub.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)
            if nargs is not None:
                sub.add_argument("entries", metavar=example, nargs=nargs)
            if restriction == "ip" and action in ("add", "set"):
                sub.add_argument(
                    "--allow-private",
                    action="store_true",
                    help="store private, loopback, link-local, reserved or multicast addresses anyway",
                )
            sub.set_defaults(handler=cmd_list, restriction=restriction)

    for name, verb in (("enable", "switch on"), ("disable", "switch off")):
        switch = command(name, f"{verb} a token's domain or IP restriction")
        switch.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)
        switch.add_argument("which", choices=("domain", "ip"))
        switch.set_defaults(handler=cmd_switch)

    delete = command("delete", "delete everything stored for a token (restrictions and history)")
    delete.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)
    delete.set_defaults(handler=cmd_delete)

    check = command("check", "explain the decision for a request (exit 0 allowed, 1 denied)")
    check.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)
    check.add_argument("--origin", metavar="O", help="the request's Origin header")
    check.add_argument("--referer", metavar="R", help="the request's Referer header")
    check.add_argument("--sec-fetch", action="store_true", help="the request carries Sec-Fetch-* headers")
    check.add_argument("--ip", metavar="IP", help="the client IP of a back-end request")
    check.add_argument("--deny-unknown", action="store_true", help="as validators set to deny unknown tokens")
    check.add_argument(
        "--replay",
        action="store_true",
        help="decide the token's last recorded denial again, against what is stored now",
    )
    check.set_defaults(handler=cmd_check)

    imports = command(
        "import",
        "import JSON Lines, one token's record a line: {token or hash, domain_enabled, ip_enabled, "
        "domains, ips}; every line is checked before anything is written",
    )
    imports.add_argument("file", metavar="FILE", help="the file, or - for standard input")
    imports.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    imports.add_argument("--allow-private", action="store_true", help="accept non-public IPs")
    imports.add_argument("--batch-size", type=int, default=_BATCH_SIZE, help="records per pipeline")
    imports.add_argument(
        "--restore",
        action="store_true",
        help="restore a wiped (unmarked) store from an export: write every record, then mark the "
        "store, so validators fail closed until the last record is back",
    )
    imports.add_argument(
        "--force",
        action="store_true",
        help="with --restore: mark the store even if Redis's maxmemory-policy may evict keys",
    )
    imports.set_defaults(handler=cmd_import)

    export = command("export", "export every token's record as JSON Lines, named by hash (import reads it)")
    export.add_argument("file", metavar="FILE", nargs="?", help="the file (default: standard output)")
    export.add_argument("--batch-size", type=int, default=_BATCH_SIZE, help="records per pipeline")
    export.set_defaults(handler=cmd_export)

    history = command("history", "show a token's recent changes, newest first")
    history.add_argument("token", metavar="TOKEN", help=_TOKEN_HELP)
    history.add_argument("-n", "--count", type=int, default=50, help="how many (the store keeps 50)")
    history.set_defaults(handler=cmd_history)

    show.set_defaults(handler=cmd_show)
    return parser


# ------------------------------------------------------------------------------ main


def _admin(args: argparse.Namespace, out: Output) -> Admin:
    url = getattr(args, "store", None) or os.environ.get("VALIDATOR_STORE_URL")
    if not url:
        raise CliError(
            EXIT_USAGE,
            "no store given: use --store URL or set VALIDATOR_STORE_URL (e.g. redis://127.0.0.1:6379/0)",
        )
    if url.startswith("memory://"):
        out.warn("a memory:// store lives only as long as this command")
    secret = getattr(args, "secret", None)
    if secret is not None:
        out.warn(
            "--secret on a command line lands in shell history and process lists; prefer VALIDATOR_SECRET"
        )
    timeout = getattr(args, "timeout", 5.0)
    return Admin.from_url(
        url,
        secret=secret,
        key_prefix=getattr(args, "key_prefix", DEFAULT_KEY_PREFIX),
        limit=getattr(args, "limit", 5),
        timeout=timeout,
        connect_timeout=timeout,
        min_prefix_v4=getattr(args, "min_prefix_v4", DEFAULT_MIN_PREFIX_V4),
        min_prefix_v6=getattr(args, "min_prefix_v6", DEFAULT_MIN_PREFIX_V6),
    )


async def _run(args: argparse.Namespace, out: Output) -> int:
    if getattr(args, "batch_size", 1) < 1:
        raise CliError(EXIT_USAGE, "--batch-size must be at least 1")
    admin = _admin(args, out)
    try:
        code: int = await args.handler(admin, args, out)
        return code
    finally:
        await admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `validator-admin` with `argv` (default: the command line); returns the exit code."""
    args = build_parser().parse_args(argv)
    out = Output(as_json=getattr(args, "json", False))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    logging.getLogger("validator").addHandler(handler)
    try:
        return asyncio.run(_run(args, out))
    except CliError as error:
        out.error(error.code, str(error))
        return error.code
    except LimitExceeded as error:
        out.error(EXIT_REFUSED, f"{error} (nothing was changed)")
        return EXIT_REFUSED
    except InvalidEntry as error:
        out.error(EXIT_REFUSED, str(error))
        return EXIT_REFUSED
    except (ConfigurationError, StoreNotInitialised) as error:
        out.error(EXIT_USAGE, str(error))
        return EXIT_USAGE
    except StoreUnavailable as error:
        out.error(EXIT_UNREACHABLE, str(error))
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`export | head`): stop quietly, as `cat` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        logging.getLogger("validator").removeHandler(handler)
