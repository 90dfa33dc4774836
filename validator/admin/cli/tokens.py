"""`validator-admin` commands on one token's record or the list of them: show, list, switch, delete,
mode (the put/add/remove/clear commands share `_report_change`).
"""

from __future__ import annotations

import argparse
import time

from validator.admin.api import Admin, Change
from validator.admin.cli.output import (
    _NAMES,
    EXIT_OK,
    EXIT_REFUSED,
    CliError,
    Output,
    _entries,
    _require_sound,
    _restrictions_json,
    _switch,
    _token,
    _use,
    _warnings,
)
from validator.model import Mode, Restrictions


async def cmd_show(admin: Admin, args: argparse.Namespace, out: Output) -> int:
    token = _token(args.token)
    await _require_sound(admin)
    now = time.time()
    stored = await admin.get(token)
    if stored is not None:
        stored = stored.active(now)  # what validators act on: lapsed entries are gone
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
            ("domain", _switch(r.domain_enabled), _entries(r.domains, r.domain_expiry, now)),
            ("ip", _switch(r.ip_enabled), _entries(r.ips, r.ip_expiry, now)),
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
    now = time.time()
    r = r.active(now)
    name = admin.fingerprint(token)
    if out.json:
        out.data(
            {"token": name, "changed": change.changed, "notes": change.notes}
            | {"restrictions": _restrictions_json(r)}
        )
        return EXIT_OK
    for note in change.notes:
        out.line(note)
    enabled, entries, expiry = (
        (r.domain_enabled, r.domains, r.domain_expiry)
        if restriction == "domain"
        else (r.ip_enabled, r.ips, r.ip_expiry)
    )
    limit = admin.store.limit
    state = f"version {r.version}" if change.changed else f"unchanged, version {r.version}"
    out.line(
        f"token {name} ({state}): {_NAMES[restriction]} restriction {_switch(enabled)}, "
        f"{len(entries)} of {limit}: {_entries(entries, expiry, now)}"
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
    expiry = {
        "expires_at": getattr(args, "expires_at", None),
        "expires_in": getattr(args, "expires_in", None),
    }
    if args.restriction == "domain":
        match args.action:
            case "add":
                change = await admin.add_domains(token, entries, **expiry)
            case "remove":
                change = await admin.remove_domains(token, entries)
            case "set":
                change = await admin.set_domains(token, entries, **expiry)
            case _:
                change = await admin.clear_domains(token)
    else:
        match args.action:
            case "add":
                change = await admin.add_ips(token, entries, allow_private=private, **expiry)
            case "remove":
                change = await admin.remove_ips(token, entries)
            case "set":
                change = await admin.set_ips(token, entries, allow_private=private, **expiry)
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
