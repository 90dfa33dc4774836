"""Who changed what, against a real redis-server: every change records its actor (`--actor`,
`VALIDATOR_ACTOR`, the OS user), the history is kept by count and age, and `history --all`
exports every token's changes as JSON Lines for a SIEM (also from a Redis Cluster)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.test_cli_support import (
    SECRET,
    Cli,
    Direct,
    Result,
    command,
    environment,
    write_lines,
)
from tests.redis_cluster import Backend
from validator import Admin
from validator.admin.api import ImportLine
from validator.errors import ConfigurationError

pytestmark = [pytest.mark.timeout(120), pytest.mark.promise("P-HISTORY")]

TOKEN = "tok_live_7f3a9c_audit_do_not_print"


def run(cli: Cli, args: tuple[str, ...], env: dict[str, str]) -> Result:
    """`cli(*args)` with these environment variables (whatever their names)."""
    done = subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(cli.store, **env),
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def history(cli: Cli, token: str = TOKEN, *args: str) -> list[dict[str, Any]]:
    result = cli("history", token, "--json", *args)
    assert result.code == 0, result.err
    entries: list[dict[str, Any]] = result.json()["history"]
    return entries


def history_key(cli: Cli, token: str) -> str:
    token_hash = Direct(cli.store or "")._run(lambda admin: _hash(admin, token))
    return f"tav:{{{token_hash}}}:h"


async def _hash(admin: Admin, token: str) -> str:
    return admin.token_hash(token)


def old_entry(at_ms: int, version: int = 0, **fields: Any) -> str:
    """A history entry as `lua/write.lua` writes it, recorded at `at_ms`: pushed by hand to stand
    for a change of long ago."""
    return json.dumps({"at": at_ms, "op": "add", "version": version, "restriction": "domain"} | fields)


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


# ------------------------------------------------------------------------------ actor


ACTOR_SOURCES = [
    # (name, arguments before the command, environment, expected actor)
    ("the flag", ("--actor", "alice"), {}, "alice"),
    ("the flag after the command", (), {"_after": "--actor=alice"}, "alice"),
    ("the environment", (), {"VALIDATOR_ACTOR": "ci-pipeline #42"}, "ci-pipeline #42"),
    ("the flag over the environment", ("--actor", "alice"), {"VALIDATOR_ACTOR": "ci"}, "alice"),
    ("the OS user and host", (), {"LOGNAME": "carol"}, f"carol@{socket.gethostname()}"),
]


@pytest.mark.parametrize(
    ("before", "env", "actor"), [s[1:] for s in ACTOR_SOURCES], ids=[s[0] for s in ACTOR_SOURCES]
)
def test_every_change_records_its_actor(
    cli: Cli, before: tuple[str, ...], env: dict[str, str], actor: str
) -> None:
    after = [env.pop("_after")] if "_after" in env else []
    result = run(cli, (*before, "domains", "add", TOKEN, "app.example.com", *after), env)
    assert result.code == 0, result.err
    [entry] = history(cli)
    assert (entry["op"], entry["actor"]) == ("add", actor)


def test_the_table_shows_the_actor(cli: Cli) -> None:
    cli("--actor", "alice", "domains", "add", TOKEN, "app.example.com")
    cli("--actor", "bob", "enable", TOKEN, "domain")
    table = cli("history", TOKEN)
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[1].split() == ["time", "(UTC)", "version", "actor", "change"]
    assert lines[2].split()[1:4] == ["2", "bob", "enable"]
    assert lines[3].split()[1:4] == ["1", "alice", "add"]


def test_import_and_restore_record_the_actor(cli: Cli, tmp_path: Path) -> None:
    lines = [{"token": f"{TOKEN}_{n}", "domains": [f"app{n}.example.com"]} for n in range(3)]
    result = cli("--actor", "importer", "import", str(write_lines(tmp_path / "t.jsonl", lines)))
    assert result.code == 0, result.err
    for n in range(3):
        assert [(e["op"], e["actor"]) for e in history(cli, f"{TOKEN}_{n}")] == [("put", "importer")]
    backup = tmp_path / "backup.jsonl"
    assert cli("export", str(backup)).code == 0
    redis.Redis.from_url(cli.store or "").flushall()  # a wiped store, restored from its export
    result = cli("--actor", "restorer", "import", "--restore", str(backup))
    assert result.code == 0, result.err
    assert [(e["op"], e["actor"]) for e in history(cli, f"{TOKEN}_1")] == [("put", "restorer")]


def test_entries_recorded_before_actors_read_as_none(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    redis.Redis.from_url(cli.store or "").rpush(history_key(cli, TOKEN), old_entry(ms("2026-01-02T03:04:05")))
    entries = history(cli)
    assert [e["actor"] for e in entries][1:] == [None]
    assert entries[1]["time"] == "2026-01-02T03:04:05.000Z"
    assert cli("history", TOKEN).out.splitlines()[-1].split()[2] == "-"


BAD_ACTORS = [
    # (name, how it is given, what the error says)
    ("a newline", {"flag": "alice\nroot"}, "--actor holds control or unprintable characters"),
    ("a terminal escape", {"flag": "alice\x1b]0;pwned\x07"}, "--actor holds control"),
    ("too long", {"flag": "a" * 129}, "--actor is 129 characters long: at most 128"),
    ("empty", {"flag": ""}, "--actor must name who makes the change"),
    ("bad in the environment", {"VALIDATOR_ACTOR": "bob\r"}, "VALIDATOR_ACTOR holds control"),
]


@pytest.mark.parametrize(("given", "says"), [b[1:] for b in BAD_ACTORS], ids=[b[0] for b in BAD_ACTORS])
def test_a_bad_actor_is_refused_and_nothing_is_written(
    cli: Cli, store: Direct, given: dict[str, str], says: str
) -> None:
    flag = ("--actor", given.pop("flag")) if "flag" in given else ()
    result = run(cli, (*flag, "domains", "add", TOKEN, "app.example.com"), given)
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"validator-admin: error: {says}")
    assert store.get(TOKEN) is None
    assert list(redis.Redis.from_url(cli.store or "").scan_iter(match="tav:{*")) == []


async def test_the_python_api_records_its_actor_and_per_call_overrides(initialised: str) -> None:
    admin = Admin.from_url(initialised, secret=SECRET, actor="provisioning-service")
    try:
        await admin.add_domains(TOKEN, ["app.example.com"])
        await admin.acting_as("support:dana").enable(TOKEN, "domain")
        await admin.put_many([admin.prepare(ImportLine(token=f"{TOKEN}_x", domains=["app.example.com"]))])
        assert [e.actor for e in await admin.history(TOKEN)] == ["support:dana", "provisioning-service"]
        assert [e.actor for e in await admin.history(f"{TOKEN}_x")] == ["provisioning-service"]
        assert admin.actor == "provisioning-service"
        with pytest.raises(ConfigurationError, match="control"):
            admin.acting_as("dana\n")
    finally:
        await admin.close()


# ------------------------------------------------------------------------------ retention


def test_retention_by_count(cli: Cli) -> None:
    for n in range(6):
        cli("--history-length", "3", "domains", "set", TOKEN, f"d{n}.example.com")
    assert [e["version"] for e in history(cli)] == [6, 5, 4]
    cli("domains", "set", TOKEN, "d9.example.com", VALIDATOR_HISTORY_LENGTH="2")
    assert [e["version"] for e in history(cli)] == [7, 6]


def test_retention_by_age_trims_at_the_token_s_next_change(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    client = redis.Redis.from_url(cli.store or "")
    now = int(time.time() * 1000)
    # Oldest last (the list is newest first): 40 days, 10 days and 2 hours old.
    for age_ms in (2 * 3_600_000, 10 * 86_400_000, 40 * 86_400_000):
        client.rpush(history_key(cli, TOKEN), old_entry(now - age_ms))
    assert len(history(cli)) == 4
    # Another token's change trims nothing of this one; a change of nothing records (and trims) nothing.
    cli("--history-max-age", "1d", "domains", "add", f"{TOKEN}_other", "x.example.com")
    cli("--history-max-age", "1d", "domains", "add", TOKEN, "app.example.com")
    assert len(history(cli)) == 4
    cli("--history-max-age", "30d", "domains", "add", TOKEN, "b.example.com")
    assert [e["version"] for e in history(cli)] == [2, 1, 0, 0]  # the 40-day-old one is gone
    cli("domains", "add", TOKEN, "c.example.com", VALIDATOR_HISTORY_MAX_AGE="1d")
    assert [e["version"] for e in history(cli)] == [3, 2, 1, 0]  # only the 2-hour-old hand-written one left
    assert history(cli)[-1]["at"] == now - 2 * 3_600_000


def test_an_unreadable_oldest_entry_does_not_stop_the_age_trim(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    client = redis.Redis.from_url(cli.store or "")
    client.rpush(history_key(cli, TOKEN), old_entry(int(time.time() * 1000) - 5 * 86_400_000), "not json")
    assert cli("--history-max-age", "1d", "enable", TOKEN, "domain").code == 0
    assert client.llen(history_key(cli, TOKEN)) == 2
    assert [e["op"] for e in history(cli)] == ["enable", "put"]


BAD_RETENTIONS = [
    (("--history-length", "0"), {}, "--history-length must be between 1 and 10000"),
    (("--history-length", "100000"), {}, "--history-length must be between 1 and 10000"),
    (("--history-max-age", "90"), {}, "--history-max-age must be a duration such as 90d"),
    (("--history-max-age=-1d",), {}, "--history-max-age must be a duration"),
    ((), {"VALIDATOR_HISTORY_MAX_AGE": "forever"}, "VALIDATOR_HISTORY_MAX_AGE must be a duration"),
    ((), {"VALIDATOR_HISTORY_LENGTH": "x"}, "VALIDATOR_HISTORY_LENGTH must be a whole number"),
]


@pytest.mark.parametrize(("flags", "env", "says"), BAD_RETENTIONS, ids=[b[2] for b in BAD_RETENTIONS])
def test_a_bad_retention_is_refused(
    cli: Cli, store: Direct, flags: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    result = run(cli, (*flags, "domains", "add", TOKEN, "app.example.com"), env)
    assert result.code == 2
    assert says in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert store.get(TOKEN) is None


# ------------------------------------------------------------------------------ history --all


def export(cli: Cli, *args: str) -> list[dict[str, Any]]:
    result = cli("history", "--all", *args)
    assert result.code == 0, result.err
    assert TOKEN not in result.out + result.err
    return [json.loads(line) for line in result.out.splitlines()]


def given_many(cli: Cli, tmp_path: Path, tokens: int) -> None:
    lines = [{"token": f"{TOKEN}_{n:03d}", "domains": [f"app{n}.example.com"]} for n in range(tokens)]
    assert cli("--actor", "importer", "import", str(write_lines(tmp_path / "t.jsonl", lines))).code == 0


def test_history_all_exports_every_change_in_time_order(cli: Cli, store: Direct, tmp_path: Path) -> None:
    given_many(cli, tmp_path, 40)
    cli("--actor", "alice", "ips", "add", f"{TOKEN}_007", "203.0.113.7")
    cli("--actor", "bob", "enable", f"{TOKEN}_003", "domain")
    client = redis.Redis.from_url(cli.store or "")
    client.rpush(
        history_key(cli, f"{TOKEN}_005"), old_entry(ms("2026-10-15T12:00:00"), entries=["old.example.com"])
    )
    client.rpush(history_key(cli, f"{TOKEN}_009"), old_entry(ms("2026-11-15T12:00:00"), actor="eve"))
    lines = export(cli)
    assert len(lines) == 40 + 2 + 2
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)
    assert lines[0]["time"] == "2026-10-15T12:00:00.000Z"
    assert lines[0]["entries"] == ["old.example.com"]
    assert (lines[1]["time"], lines[1]["actor"]) == ("2026-11-15T12:00:00.000Z", "eve")
    assert [(line["op"], line["actor"]) for line in lines[-2:]] == [("add", "alice"), ("enable", "bob")]
    assert lines[-2]["entries"] == ["203.0.113.7"] and lines[-2]["restriction"] == "ip"
    assert {line["actor"] for line in lines[2:-2]} == {"importer"}
    hashes = {line["hash"] for line in lines}
    assert len(hashes) == 40
    assert all(line["token"] == line["hash"][:10] and len(line["hash"]) == 22 for line in lines)
    assert lines[-1]["hash"] == store._run(lambda admin: _hash(admin, f"{TOKEN}_003"))
    # Since a date, and since a duration back from now.
    assert [line["time"] for line in export(cli, "--since", "2026-11-01")][:1] == ["2026-11-15T12:00:00.000Z"]
    assert len(export(cli, "--since", "2026-11-01")) == 43
    assert len(export(cli, "--since", "24h")) == 42
    assert export(cli, "--since", "2099-01-01") == []


def test_history_since_for_one_token(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    redis.Redis.from_url(cli.store or "").rpush(history_key(cli, TOKEN), old_entry(ms("2026-10-15T12:00:00")))
    assert len(history(cli)) == 2
    assert [e["op"] for e in history(cli, TOKEN, "--since", "7d")] == ["put"]


USAGE = [
    (("history",), "give a TOKEN, or --all"),
    (("history", "--all", TOKEN), "give no TOKEN and no --count"),
    (("history", "--all", "-n", "5"), "give no TOKEN and no --count"),
    (("history", "--all", "--since", "yesterday"), "--since 'yesterday': give a duration"),
]


@pytest.mark.parametrize(("args", "says"), USAGE, ids=[u[1] for u in USAGE])
def test_history_usage_errors(cli: Cli, args: tuple[str, ...], says: str) -> None:
    result = cli(*args)
    assert result.code == 2
    assert says in result.err
    assert TOKEN not in result.err


def test_an_empty_store_exports_nothing(cli: Cli) -> None:
    assert export(cli) == []


async def test_history_all_on_every_deployment(backend: Backend) -> None:
    """SCAN reaches every primary of a Redis Cluster; tokens' histories sit in their own slots."""
    admin = Admin.from_url(backend.url, secret=SECRET, actor="ops")
    try:
        await admin.init()
        tokens = [f"{TOKEN}_{n:03d}" for n in range(60)]
        for n, token in enumerate(tokens):
            await admin.add_domains(token, [f"app{n}.example.com"])
        for token in tokens[::7]:
            await admin.acting_as("dana").enable(token, "domain")
        got = [(token_hash, entry) async for token_hash, entry in admin.history_all()]
        assert len(got) == 60 + len(tokens[::7])
        assert [entry.at for _, entry in got] == sorted(entry.at for _, entry in got)
        assert {token_hash for token_hash, _ in got} == {admin.token_hash(token) for token in tokens}
        assert sum(entry.actor == "dana" for _, entry in got) == len(tokens[::7])
        since = got[60][1].at
        later = [entry async for _, entry in admin.history_all(since_ms=since)]
        assert later and all(entry.at >= since for entry in later)
    finally:
        await admin.close()
