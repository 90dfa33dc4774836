"""`validator-admin`: populate, inspect, explain, import and export token restrictions.

A thin face over `validator.admin.Admin`. Output is a `rich` table on a terminal, plain text when
piped, JSON with `--json`; errors go to stderr with the exit codes of `EXIT_CODES`. A token is
never printed whole: output names it by its fingerprint (see `validator.store.fingerprint`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

from validator.admin.api import Admin
from validator.admin.audit import checked_actor, retention_options
from validator.admin.cli import suggest
from validator.admin.cli.history import cmd_history
from validator.admin.cli.output import (
    _BATCH_SIZE,
    EPILOG,
    EXIT_CODES,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PROG,
    CliError,
    Output,
    _LogFormatter,
    _Parser,
    duration,
    instant,
)
from validator.admin.cli.support import cmd_check, cmd_denials, cmd_init
from validator.admin.cli.tokens import cmd_delete, cmd_list, cmd_mode, cmd_show, cmd_switch
from validator.admin.cli.transfer import cmd_export, cmd_import
from validator.errors import (
    ConfigurationError,
    InvalidEntry,
    LimitExceeded,
    StoreNotInitialised,
    StoreUnavailable,
)
from validator.options import add_arguments, fields
from validator.rules.networks import DEFAULT_MIN_PREFIX_V4, DEFAULT_MIN_PREFIX_V6
from validator.store.options import ADMIN_CLI, StoreOptions, store_default

__all__ = ["EXIT_CODES", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]


# ------------------------------------------------------------------------------ parser


# The store's options with a flag of their own (the secret and the timeouts have theirs, below).
_STORE_FLAGS = tuple(f for f in fields(StoreOptions) if f.name in ("key_prefix", "limit", "write_retry"))


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
    # Made from the store's options record (validator/store/options.py): its help and defaults.
    add_arguments(group, _STORE_FLAGS, {})
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=f"Redis connect and socket timeout (default: {store_default('timeout', ADMIN_CLI):g})",
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
    group.add_argument(
        "--actor",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="who makes the change, recorded in the history (default: $VALIDATOR_ACTOR, else user@host)",
    )
    group.add_argument(
        "--history-length",
        type=int,
        metavar="N",
        default=argparse.SUPPRESS,
        help="history entries kept per token, applied by each change (default: "
        "$VALIDATOR_HISTORY_LENGTH, else 50)",
    )
    group.add_argument(
        "--history-max-age",
        metavar="AGE",
        default=argparse.SUPPRESS,
        help="history entries older than this (90d, 12h) are dropped at the token's next change "
        "(default: $VALIDATOR_HISTORY_MAX_AGE, else kept)",
    )
    return common


_TOKEN_HELP = "the token, or - to read it from standard input"


def _installed_version() -> str:
    """The installed distribution's version (the one `pip show token-access-validator` shows)."""
    try:
        return importlib.metadata.version("token-access-validator")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
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
        "--ref",
        metavar="REF",
        help="the denial an Access-Denied-Ref header names (any validator's; no token needed)",
    )
    denials.add_argument(
        "--since", metavar="WHEN", help="a duration back from now (15m, 2h, 1d) or an ISO time"
    )
    denials.add_argument("-n", "--count", type=int, default=50, help="how many at most (default: 50)")
    denials.set_defaults(handler=cmd_denials)

    suggest.add_parser(command("suggest", suggest.HELP), _TOKEN_HELP)

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
            if action in ("add", "set"):
                expiry = sub.add_mutually_exclusive_group()
                expiry.add_argument(
                    "--for",
                    dest="expires_in",
                    metavar="DURATION",
                    type=duration,
                    help="the entries stop matching after this long (90s, 30m, 2h, 1h30m, 7d, 2w)",
                )
                expiry.add_argument(
                    "--until",
                    dest="expires_at",
                    metavar="INSTANT",
                    type=instant,
                    help="the entries stop matching at this instant (ISO 8601 and zone: 2026-12-31T18:00Z)",
                )
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
    check.add_argument(
        "token",
        metavar="TOKEN",
        nargs="?",
        help=_TOKEN_HELP + " (with --replay REF: optional, and checked against the reference)",
    )
    check.add_argument("--origin", metavar="O", help="the request's Origin header")
    check.add_argument("--referer", metavar="R", help="the request's Referer header")
    check.add_argument("--sec-fetch", action="store_true", help="the request carries Sec-Fetch-* headers")
    check.add_argument("--ip", metavar="IP", help="the client IP of a back-end request")
    check.add_argument("--deny-unknown", action="store_true", help="as validators set to deny unknown tokens")
    check.add_argument(
        "--replay",
        nargs="?",
        const="",
        metavar="REF",
        help="decide a recorded denial again, against what is stored now: the one an "
        "Access-Denied-Ref names (no token needed), or without REF the token's last",
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

    history = command(
        "history",
        "show a token's recent changes, newest first, with who made them; --all: every token's, "
        "oldest first, as JSON Lines (for a SIEM)",
    )
    history.add_argument("token", metavar="TOKEN", nargs="?", help=_TOKEN_HELP + " (not with --all)")
    history.add_argument(
        "--all",
        action="store_true",
        help="every token's changes as JSON Lines on standard output, oldest first, each naming its "
        "token by fingerprint and hash (never the token)",
    )
    history.add_argument(
        "--since",
        metavar="WHEN",
        help="only changes since: a duration back from now (15m, 24h, 7d) or an ISO time",
    )
    history.add_argument(
        "-n",
        "--count",
        type=int,
        help="with TOKEN: how many at most (default: 50; the store keeps --history-length)",
    )
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
    timeout = getattr(args, "timeout", store_default("timeout", ADMIN_CLI))
    given = {f.name: getattr(args, f.name) for f in _STORE_FLAGS if hasattr(args, f.name)}
    actor = getattr(args, "actor", None)
    if actor is not None:
        checked_actor(actor, "--actor")
    retention = (getattr(args, "history_length", None), getattr(args, "history_max_age", None))
    retention_options(*retention, names=("--history-length", "--history-max-age"))
    return Admin.from_url(
        url,
        secret=secret,
        timeout=timeout,
        connect_timeout=timeout,
        min_prefix_v4=getattr(args, "min_prefix_v4", DEFAULT_MIN_PREFIX_V4),
        min_prefix_v6=getattr(args, "min_prefix_v6", DEFAULT_MIN_PREFIX_V6),
        actor=actor,
        history_length=retention[0],
        history_max_age=retention[1],
        **given,
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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and isinstance(getattr(args, "entries", None), list)
        and not any(e.startswith("-") for e in extra)
    ):
        # `set TOKEN --until T a.example b.example`: argparse gives an optional list of entries
        # (`set` may empty a list) nothing once an option came between, and leaves the entries
        # over; they are the list's, as they are after the option for `add`.
        args.entries += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
