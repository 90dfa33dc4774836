"""The audit trail shows everything a change records: every field `lua/write.lua` writes into a
history entry, for every op it can record, is in `history`, `history --json` and `history --all`.

The ops and fields are read from the write script itself, so a new op, or a new field, that the
three outputs do not show fails here (a report-only switch once showed as `mode None: -`)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import msgspec
import pytest
import redis

from tests.integration.test_cli_support import SECRET, Cli
from validator import Admin, Restrictions
from validator.admin.api import HistoryEntry
from validator.model import Mode

pytestmark = [pytest.mark.timeout(120), pytest.mark.promise("P-HISTORY-COMPLETE")]

TOKEN = "tok_live_history_fields_0001"
ACTOR = "auditor@history-test"

WRITE_SCRIPT = resources.files("validator.store").joinpath("lua/write.lua").read_text()

# Ops the script dispatches on that record under another name, or record nothing.
RECORDED_AS = {"switch": {"enable", "disable"}, "delete": set()}


def dispatched_ops() -> set[str]:
    """The ops `write.lua` accepts (`op == '...'`)."""
    return set(re.findall(r"\bop == '(\w+)'", WRITE_SCRIPT))


def recorded_ops() -> set[str]:
    """Every op name a history entry may carry: the dispatched ops under their recorded names,
    plus those the script records on its own (`record({op = 'expire', ...})`)."""
    names: set[str] = set()
    for op in dispatched_ops():
        names |= RECORDED_AS.get(op, {op})
    names |= set(re.findall(r"record\(\{op = '(\w+)'", WRITE_SCRIPT))
    return names


def recorded_fields() -> set[str]:
    """Every field name the script sets on a history entry: `entry.NAME =`, the fields of an
    entry built in place (`record({NAME = ...})`), and those set by name (`entry[name]`)."""
    fields = set(re.findall(r"\bentry\.(\w+)\s*=", WRITE_SCRIPT))
    for literal in re.findall(r"record\(\{(.*?)\}\)", WRITE_SCRIPT, re.DOTALL):
        fields |= set(re.findall(r"(\w+)\s*=", literal))
    if "entry[name]" in WRITE_SCRIPT:
        fields |= set(re.findall(r"= '(\w+_expiry)'", WRITE_SCRIPT))
    return fields


def when(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown_as(field: str, value: Any) -> Iterator[str]:
    """What the `history` table must show for one stored field."""
    if field in ("at", "expires_at"):
        yield when(value)
    elif field in ("op", "actor", "restriction", "mode"):
        yield value
    elif field == "version":
        yield str(value)
    elif field in ("entries", "domains", "ips"):
        yield from value
    elif field in ("domain_enabled", "ip_enabled"):
        yield f"{field.removesuffix('_enabled')} {'on' if value else 'off'}"
    elif field in ("domain_expiry", "ip_expiry"):
        yield from (f"{entry} (until {when(at)})" for entry, at in value.items())
    else:
        pytest.fail(f"history field {field!r} has no known rendering: show it in `history` and here")


async def write_every_op(url: str) -> None:
    """One change of every kind the write script records, each with every field it can carry."""
    admin = Admin.from_url(url, secret=SECRET, actor=ACTOR)
    try:
        assert await admin.init()
        await admin.add_domains(TOKEN, ["app.example.com", "old.example.com"], expires_in=timedelta(hours=2))
        await admin.add_ips(TOKEN, ["203.0.113.7"])
        await admin.remove_domains(TOKEN, ["old.example.com"])
        await admin.set_ips(TOKEN, ["198.51.100.0/24"], expires_in=timedelta(hours=1))
        await admin.enable(TOKEN, "domain")
        await admin.disable(TOKEN, "domain")
        await admin.set_mode(TOKEN, "report")
        in_a_day = int((time.time() + 86400) * 1000)
        record = Restrictions(
            domain_enabled=True,
            ip_enabled=True,
            domains=["app.example.com", "temp.example.com"],
            ips=["203.0.113.9"],
            mode=Mode.REPORT,
            domain_expiry={"temp.example.com": in_a_day},
            ip_expiry={"203.0.113.9": in_a_day},
        )
        await admin.put(TOKEN, record)
        change = await admin.add_domains(TOKEN, ["lapse.example.com"], expires_in=timedelta(milliseconds=200))
        lapses = change.restrictions.domain_expiry["lapse.example.com"] if change.restrictions else 0
        # The next write sweeps the lapsed entry (op "expire") once Redis's clock has passed it.
        await asyncio.sleep(max(0.0, lapses / 1000 - time.time()) + 0.3)
        await admin.set_mode(TOKEN, "enforce")
    finally:
        await admin.close()


def test_the_script_is_read_as_expected() -> None:
    # Guards the parsing above: if these fail, the script changed shape, not the outputs.
    assert {"add", "remove", "set", "switch", "mode", "put", "delete"} <= dispatched_ops()
    assert {"enable", "disable", "expire", "mode", "put"} <= recorded_ops()
    assert {"at", "op", "version", "actor", "mode", "entries", "domain_expiry"} <= recorded_fields()


def test_every_recorded_field_is_a_history_entry_field() -> None:
    assert recorded_fields() <= set(HistoryEntry.__struct_fields__)


def test_history_json_and_all_show_every_stored_field(redis_url: str) -> None:
    asyncio.run(write_every_op(redis_url))
    cli = Cli(redis_url)
    client = redis.Redis.from_url(redis_url)
    keys = [key.decode() if isinstance(key, bytes) else key for key in client.keys("tav:*:h")]
    assert len(keys) == 1, keys
    token_hash = keys[0].split("{")[1].split("}")[0]
    stored = [json.loads(raw) for raw in client.lrange(keys[0], 0, -1)]
    client.close()

    # The scenario exercised every op and every field the script can record.
    assert {entry["op"] for entry in stored} == recorded_ops()
    assert set().union(*stored) == recorded_fields()

    plain = cli("history", TOKEN)
    as_json = cli("history", TOKEN, "--json")
    every = cli("history", "--all")
    for result in (plain, as_json, every):
        assert result.code == 0, result.err
    rows = {int(m[1]): line for line in plain.out.splitlines() if (m := re.match(r"\S+Z\s+(\d+)\s", line))}
    json_entries = {e["version"]: e for e in as_json.json()["history"]}
    all_lines = {e["version"]: e for e in map(json.loads, every.out.splitlines()) if e["hash"] == token_hash}
    assert len(rows) == len(json_entries) == len(all_lines) == len(stored)

    for raw in stored:
        version = raw["version"]
        for field, value in raw.items():
            assert json_entries[version].get(field) == value, (raw["op"], field, "history --json")
            assert all_lines[version].get(field) == value, (raw["op"], field, "history --all")
            for text in shown_as(field, value):
                assert text in rows[version], (raw["op"], field, text, rows[version])


def test_a_switch_to_report_only_reads_as_one(redis_url: str) -> None:
    asyncio.run(write_every_op(redis_url))
    plain = Cli(redis_url)("history", TOKEN).out
    assert "mode report" in plain
    assert "mode None" not in plain
    entry = msgspec.json.decode(
        json.dumps({"at": 0, "op": "mode", "version": 1, "mode": "report"}), type=HistoryEntry
    )
    assert entry.mode == "report"


def test_suggest_learn_shows_its_mode_in_every_view(cli: Cli) -> None:
    # `suggest --learn` (and `--enforce`) write whole records (op put): the mode is their point.
    token = "tok_live_history_suggest_0001"
    assert cli("domains", "add", token, "app.example.com").code == 0
    learn = cli("suggest", token, "--learn", "--yes")
    assert learn.code == 0, learn.err
    plain = cli("history", token).out
    newest = plain.splitlines()[2]
    assert newest.endswith("mode report"), plain
    (entry, *_) = cli("history", token, "--json").json()["history"]
    assert (entry["op"], entry["mode"]) == ("put", "report")
    lines = [json.loads(line) for line in cli("history", "--all").out.splitlines()]
    assert (lines[-1]["op"], lines[-1]["mode"]) == ("put", "report")
