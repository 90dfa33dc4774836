"""`validator-admin suggest`: an allowlist learnt from a token's denials; `--apply`, `--enforce`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import msgspec

from validator.admin.api import Admin
from validator.admin.cli.output import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PROG,
    CliError,
    Output,
    _entries,
    _restrictions_json,
    _switch,
    _token,
    _unsound,
    _when,
)
from validator.admin.cli.support import _since_ms
from validator.admin.proposal import ListProposal, Observation, Suggestion
from validator.errors import StoreNotInitialised
from validator.model import Mode, Restrictions
from validator.settings import DEFAULTS

HELP = (
    "propose an allowlist from the domains and addresses a token's denials and would-be denials "
    "(report-only mode) saw, ranked by traffic, with the share it would still deny; --apply "
    "writes it, --enforce also switches the restrictions on and the token to enforce mode"
)


def add_parser(command: argparse.ArgumentParser, token_help: str) -> None:
    """The arguments of `suggest` (registered in `validator.admin.cli`)."""
    command.add_argument("token", metavar="TOKEN", help=token_help)
    command.add_argument(
        "--since", metavar="WHEN", help="learn from denials since then: a duration (7d, 12h) or an ISO time"
    )
    command.add_argument(
        "--apply", action="store_true", help="write the proposed lists (one atomic write; asks first)"
    )
    command.add_argument(
        "--enforce",
        action="store_true",
        help="--apply, and in the same write switch on each restriction whose list allows traffic "
        "seen and switch the token to enforce mode",
    )
    command.add_argument(
        "--learn",
        action="store_true",
        help="start learning instead: one write that puts the token in report-only mode with both "
        "restrictions on (lists kept), so every request they would deny is let through and recorded",
    )
    command.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    command.add_argument(
        "-n", "--count", type=int, default=50, help="rows shown, by traffic (default: 50; --json has all)"
    )
    command.add_argument(
        "--allow-private",
        action="store_true",
        help="propose private, loopback, link-local or reserved addresses too (on-premises setups)",
    )
    command.set_defaults(handler=cmd_suggest)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%} of {whole:,}" if whole else "none of 0"


def _verdict(o: Observation) -> str:
    match o.status:
        case "listed":
            return f"listed: {o.entry}"
        case "proposed":
            return f"propose {o.entry}" + (f" ({o.why})" if o.why else "")
        case "over_limit":
            return f"over the limit: {o.entry} not proposed"
        case _:
            return f"refused: {o.why}"


def _list_json(p: ListProposal) -> dict[str, object]:
    return msgspec.to_builtins(p)  # type: ignore[no-any-return]


def suggestion_json(name: str, s: Suggestion) -> dict[str, object]:
    """The `--json` shape: the proposal, the observations with their times in ISO form."""
    return {
        "token": name,
        "stored": s.stored is not None,
        "report_only": s.report_only,
        "current": _restrictions_json(s.stored) if s.stored is not None else None,
        "limit": s.limit,
        "entries_read": s.entries_read,
        "denials": s.denials,
        "still_denied": s.still_denied,
        "share_denied": s.share_denied,
        "oldest": None if s.oldest_ms is None else _when(s.oldest_ms),
        "newest": None if s.newest_ms is None else _when(s.newest_ms),
        "domains": _list_json(s.domains),
        "ips": _list_json(s.ips),
        "wildcards": msgspec.to_builtins(s.wildcards),
        "summary": s.summary,
        "floods": msgspec.to_builtins(s.floods),
        "observations": [
            msgspec.to_builtins(o) | {"first": _when(o.first_ms), "last": _when(o.last_ms)}
            for o in s.observations
        ],
        "proposed": _restrictions_json(s.record(enforce=True)),
    }


def _show(out: Output, name: str, s: Suggestion, since: str | None, rows: int) -> None:
    r = s.stored
    window = f"since {since}" if since else "all the log keeps"
    if s.oldest_ms is not None and s.newest_ms is not None:
        window += f": {_when(s.oldest_ms)} to {_when(s.newest_ms)}"
    out.table(
        ("seen", "kind", "requests", "first seen", "last seen", "verdict"),
        [
            (o.seen, o.kind, f"{o.count:,}", _when(o.first_ms), _when(o.last_ms), _verdict(o))
            for o in s.observations[: max(0, rows)]
        ],
        title=f"token {name}: {s.denials:,} requests denied or reported in {s.entries_read:,} "
        f"{'summary entries (per client and value)' if s.summary else 'log entries'} ({window}), by traffic",
    )
    hidden = s.observations[max(0, rows) :]
    if hidden:
        out.line(
            f"... and {len(hidden):,} more seen, {sum(o.count for o in hidden):,} requests in all "
            "(-n to show more, --json lists every one)"
        )
    for flood in s.floods:
        out.line(
            f"warning: the log looks flooded: client {flood.client} sent {flood.values:,} distinct "
            f"domains or addresses ({flood.requests:,} requests kept): what only it sent is refused, "
            "never proposed, and it weighs as one client (a holder of the token spraying Origins?)"
        )
    if not s.summary and s.entries_read >= DEFAULTS["denial_stream_length"]:
        out.line(
            f"note: {s.entries_read:,} entries is about all a token's log keeps (validators' "
            f"denial_stream_length, {DEFAULTS['denial_stream_length']:,} by default): older traffic "
            "was trimmed, and is not counted"
        )
    for wildcard in s.wildcards:
        if not wildcard.proposed:
            out.line(f"not proposed: {wildcard.entry} for {_entries(wildcard.hosts)}: {wildcard.why}")
    if r is None:
        out.line("now: nothing stored (the token is unrestricted, or denied as unknown)")
    else:
        mode = "REPORT-ONLY (would-be denials allowed)" if r.mode is Mode.REPORT else "enforcing"
        out.line(
            f"now: {mode}; domain {_switch(r.domain_enabled)} [{_entries(r.domains)}], "
            f"ip {_switch(r.ip_enabled)} [{_entries(r.ips)}]"
        )
    proposed = s.record(enforce=True)
    out.line(f"proposed (at most {s.limit} a list; * = new):")
    for label, kind, p, on in (
        ("domains", "front-end", s.domains, proposed.domain_enabled),
        ("ips", "back-end", s.ips, proposed.ip_enabled),
    ):
        entries = [e + ("*" if e in p.added else "") for e in p.entries]
        out.line(
            f"  {label:8} {_switch(on):3} [{_entries(entries)}]: would still deny "
            f"{_share(p.still_denied, p.observed)} {kind} requests seen"
        )
    out.line(f"  in all: would still deny {_share(s.still_denied, s.denials)} requests seen")


def _confirm(args: argparse.Namespace, what: str) -> bool:
    """Whether the admin agrees to `what` (--yes, or an answer on the terminal)."""
    if args.yes:
        return True
    print(f"{what} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        return False
    return answer.strip().lower() in ("y", "yes")


async def _learn(admin: Admin, args: argparse.Namespace, out: Output, token: str) -> int:
    name = admin.fingerprint(token)
    if not _confirm(args, f"put token {name} in report-only mode with both restrictions on?"):
        raise CliError(EXIT_REFUSED, "not confirmed: nothing was changed")
    change = await admin.learn(token)
    r = change.restrictions or Restrictions()
    if out.json:
        out.data({"token": name, "changed": change.changed, "restrictions": _restrictions_json(r)})
        return EXIT_OK
    state = f"version {r.version}" if change.changed else f"unchanged, version {r.version}"
    out.line(
        f"token {name} ({state}): learning: report-only, domain on [{_entries(r.domains)}], ip on "
        f"[{_entries(r.ips)}]; what they would deny is let through and recorded: run `suggest` later"
    )
    return EXIT_OK


async def cmd_suggest(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    apply = args.apply or args.enforce
    if args.learn and (apply or args.since or args.allow_private):
        raise CliError(EXIT_USAGE, "--learn starts learning: it goes alone (with --yes at most)")
    if (apply or args.learn) and not args.yes and (out.json or not sys.stdin.isatty()):
        raise CliError(
            EXIT_USAGE,
            f"{'--learn' if args.learn else '--apply/--enforce'} changes the token and "
            + ("--json shows nothing to confirm" if out.json else "there is no terminal to confirm on")
            + ": add --yes (nothing was changed)",
        )
    token = _token(args.token)
    if args.learn:
        return await _learn(admin, args, out, token)
    since_ms = _since_ms(args.since)
    since = datetime.fromtimestamp(since_ms / 1000, UTC) if since_ms else None
    try:
        suggestion = await admin.suggest(token, since=since, allow_private=args.allow_private)
    except StoreNotInitialised as error:
        raise CliError(EXIT_UNREACHABLE, _unsound(error.state)) from None
    name = admin.fingerprint(token)
    if not suggestion.entries_read:
        raise CliError(
            EXIT_REFUSED,
            f"token {name}: no denials recorded{' since ' + args.since if args.since else ''}, nothing "
            "to learn from: put the token in report-only mode with its restrictions on (`mode TOKEN "
            "report`, `enable TOKEN domain`, `enable TOKEN ip`) and let traffic come",
        )
    if out.json and not apply:
        out.data(suggestion_json(name, suggestion))
        return EXIT_OK
    if not out.json:
        _show(out, name, suggestion, args.since, args.count)
    if not apply:
        if not out.json:
            out.line(f"write it with: {PROG} suggest TOKEN --apply (--enforce to also enforce it)")
        return EXIT_OK
    record = suggestion.record(enforce=args.enforce)
    what = f"write these lists for token {name}" + (
        ", switch the restrictions as shown and enforce?" if args.enforce else "?"
    )
    if not _confirm(args, what):
        raise CliError(EXIT_REFUSED, "not confirmed: nothing was changed")
    change = await admin.apply_suggestion(token, suggestion, enforce=args.enforce)
    stored = change.restrictions or Restrictions()
    if out.json:
        out.data(
            suggestion_json(name, suggestion)
            | {"applied": True, "changed": change.changed, "restrictions": _restrictions_json(stored)}
        )
        return EXIT_OK
    state = f"version {stored.version}" if change.changed else f"unchanged, version {stored.version}"
    mode = "report-only" if stored.mode is Mode.REPORT else "enforcing"
    out.line(
        f"token {name} ({state}): {mode}; domain {_switch(stored.domain_enabled)} "
        f"[{_entries(stored.domains)}], ip {_switch(stored.ip_enabled)} [{_entries(stored.ips)}]"
    )
    if record.mode is Mode.REPORT:
        out.line("still report-only: enforce it with `mode TOKEN enforce` (or suggest --enforce)")
    return EXIT_OK
