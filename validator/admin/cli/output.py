"""How `validator-admin` speaks: exit codes, errors, output (a `rich` table on a terminal, plain
text when piped, JSON with `--json`), and the formatting its commands share.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import logging
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import msgspec

from validator.admin.api import Admin, HistoryEntry
from validator.model import MAX_TOKEN_LENGTH, Restrictions, is_token, token_rule

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CODES = {
    EXIT_OK: "done; for check: the request would be allowed",
    EXIT_REFUSED: "refused input (domain, IP, limit, import line), nothing changed (a removal, "
    "clear, disable or mode on a token with nothing stored), or check: the request would be denied; "
    "suggest: no denial recorded to learn from, not confirmed, or nothing to enforce",
    EXIT_USAGE: "usage: bad arguments, settings or store URL, no store given; or a write refused "
    "because the store is not initialised for this secret, or init refused for its eviction policy; "
    "or a change to confirm without a terminal (or with --json) and without --yes",
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
  VALIDATOR_ACTOR       who makes the changes, recorded in the history, when --actor is not
                        given (default: user@host of this process)
  VALIDATOR_HISTORY_LENGTH, VALIDATOR_HISTORY_MAX_AGE
                        the history kept per token (--history-length, --history-max-age)

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


def _entries(entries: Sequence[str], expiry: dict[str, int] | None = None, now: float | None = None) -> str:
    """The entries, each expiring one followed by the time it has left (by `now`, default: the
    local clock)."""
    if not entries:
        return "-"
    if not expiry:
        return ", ".join(entries)
    now_ms = (time.time() if now is None else now) * 1000
    return ", ".join(
        f"{entry} ({_left(expiry[entry] - now_ms)} left)" if entry in expiry else entry for entry in entries
    )


def _left(ms: float) -> str:
    """A remaining time in words, to the minute (to the second under one)."""
    seconds = max(0, int(ms // 1000))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return " ".join(part for part in parts if part)


_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def duration(text: str) -> timedelta:
    """`--for`: a positive duration such as 90s, 30m, 2h, 1h30m, 7d, 2w (argparse type)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write it as 90s, 30m, 2h, 1h30m, 7d or 2w"
        )
    weeks, days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    try:
        value = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        value = timedelta.max
    if value <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r}: an expiry duration must be longer than zero")
    return value


def instant(text: str) -> datetime:
    """`--until`: an ISO 8601 instant with its time zone, such as 2026-12-31T18:00Z (argparse type)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an instant with a time zone: write it as 2026-12-31T18:00Z "
            "or 2026-12-31T19:00+01:00"
        )
    return value


def _expiry_json(expiry: dict[str, int]) -> dict[str, str]:
    return {entry: _when(at) for entry, at in sorted(expiry.items())}


def _use(r: Restrictions | None) -> tuple[str, str]:
    """(id, words) of what the token's switches mean, per docs/behaviour.md's decision table."""
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
        "domain_expiry": _expiry_json(r.domain_expiry),
        "ip_expiry": _expiry_json(r.ip_expiry),
    }


def _when(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _what(entry: HistoryEntry) -> str:
    if entry.op in ("enable", "disable"):
        return f"{entry.op} {entry.restriction}"
    if entry.op == "mode":
        return f"mode {entry.mode or '-'}"
    if entry.op == "put":
        mode = f", mode {entry.mode}" if entry.mode is not None else ""
        return (
            f"put: domain {_switch(bool(entry.domain_enabled))} "
            f"[{_until(entry.domains, entry.domain_expiry)}], "
            f"ip {_switch(bool(entry.ip_enabled))} [{_until(entry.ips, entry.ip_expiry)}]{mode}"
        )
    if entry.expires_at is not None:
        return f"{entry.op} {entry.restriction}: {_entries(entry.entries)} (until {_when(entry.expires_at)})"
    return f"{entry.op} {entry.restriction}: {_entries(entry.entries)}"


def _until(entries: Sequence[str], expiry: dict[str, int]) -> str:
    if not entries:
        return "-"
    return ", ".join(f"{e} (until {_when(expiry[e])})" if e in expiry else e for e in entries)


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
