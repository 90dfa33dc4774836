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
from collections.abc import Sequence
from datetime import UTC, datetime
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
