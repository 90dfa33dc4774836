"""`validator-admin` import, export and history against a real redis-server, at scale and under
concurrent writers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.test_cli import run_on_terminal
from tests.integration.test_cli_support import SECRET, Cli, Direct, command, environment, write_lines
from validator import Restrictions

TOKEN = "tok_live_2b8e4f6a1c_do_not_print"


def record(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "token": f"tok_{n:06d}",
        "domain_enabled": n % 2 == 0,
        "ip_enabled": n % 3 == 0,
        "domains": [f"app{n}.example.com", "*.shared.example.org"],
        "ips": [f"203.0.{n // 256 % 256}.{n % 256}", "2001:db8::/48"],
    } | fields


def second_database(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/1"


# ------------------------------------------------------------------------------ import


def test_import_writes_every_record(cli: Cli, store: Direct, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "tokens.jsonl", [record(n) for n in range(20)])
    result = cli("import", str(path))
    assert result.code == 0, result.err
    assert "imported 20 records" in result.out
    assert "20 created, 0 changed, 0 unchanged" in result.out
    assert store.get("tok_000006") == Restrictions(
        domain_enabled=True,
        ip_enabled=True,
        domains=["*.shared.example.org", "app6.example.com"],
        ips=["2001:db8::/48", "203.0.0.6"],
        version=1,
    )


def test_import_normalises_entries_and_says_so(cli: Cli, store: Direct, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [{"token": TOKEN, "domains": ["https://App.example.com/x"]}])
    result = cli("import", str(path))
    assert result.code == 0, result.err
    assert "line 1: 'https://App.example.com/x': stored 'app.example.com'" in result.err
    stored = store.get(TOKEN)
    assert stored is not None and stored.domains == ["app.example.com"]  # a URL keeps its host


def test_import_again_changes_nothing(cli: Cli, store: Direct, tmp_path: Path, redis_url: str) -> None:
    path = write_lines(tmp_path / "tokens.jsonl", [record(n) for n in range(50)])
    assert cli("import", str(path)).code == 0
    history = redis.Redis.from_url(redis_url).llen(f"tav:{{{hash_of(cli, 'tok_000007')}}}:h")
    again = cli("import", str(path), "--json")
    assert again.code == 0
    assert again.json() | {"seconds": 0} == {
        "records": 50,
        "created": 0,
        "changed": 0,
        "unchanged": 50,
        "dry_run": False,
        "restore": False,
        "seconds": 0,
    }
    stored = store.get("tok_000007")
    assert stored is not None and stored.version == 1
    assert redis.Redis.from_url(redis_url).llen(f"tav:{{{hash_of(cli, 'tok_000007')}}}:h") == history == 1


def test_import_replaces_a_whole_record(cli: Cli, store: Direct, tmp_path: Path) -> None:
    store.given(TOKEN, domains=["old.example.com"], ips=["203.0.113.1"], on=["ip"])
    path = write_lines(
        tmp_path / "t.jsonl", [{"token": TOKEN, "domain_enabled": True, "domains": ["new.test"]}]
    )
    result = cli("import", str(path))
    assert "0 created, 1 changed, 0 unchanged" in result.out
    assert store.get(TOKEN) == Restrictions(domain_enabled=True, domains=["new.test"], version=2)


def test_import_dry_run_counts_and_writes_nothing(
    cli: Cli, store: Direct, tmp_path: Path, redis_url: str
) -> None:
    store.given("tok_000000", domains=["app0.example.com"])
    store.given("tok_000001", **unpack(record(1)))
    path = write_lines(tmp_path / "tokens.jsonl", [record(n) for n in range(5)])
    before = sorted(redis.Redis.from_url(redis_url).keys())
    result = cli("import", str(path), "--dry-run")
    assert result.code == 0, result.err
    assert "would create 3, change 1, leave 1 unchanged; nothing was written" in result.out
    assert sorted(redis.Redis.from_url(redis_url).keys()) == before


def test_import_reads_standard_input(cli: Cli, store: Direct) -> None:
    result = cli("import", "-", stdin=json.dumps({"token": TOKEN, "ips": ["203.0.113.7"]}) + "\n\n")
    assert result.code == 0, result.err
    assert store.get(TOKEN) == Restrictions(ips=["203.0.113.7"], version=1)


BAD_LINES = [
    # (line as written in the file, what the report says)
    pytest.param('{"token": "t1", "domains": ["ok.test"]', "truncated", id="unfinished json"),
    pytest.param('{"token": "t1",, }', "JSON is malformed", id="malformed json"),
    pytest.param("[1, 2]", "Expected `object`", id="not an object"),
    pytest.param('{"token": "t1", "domain": ["a.test"]}', "unknown field `domain`", id="unknown field"),
    pytest.param('{"token": "t1", "ips": "203.0.113.7"}', "Expected `array`", id="ips not a list"),
    pytest.param('{"token": 7}', "Expected `str | null`", id="token not a string"),
    pytest.param('{"domains": ["a.test"]}', "exactly one of 'token' or 'hash'", id="neither token nor hash"),
    pytest.param('{"token": "t1", "hash": "AAAAAAAAAAAAAAAAAAAAAA"}', "exactly one of",
                 id="both token and hash"),
    pytest.param('{"hash": "not-a-hash"}', "not a token hash", id="bad hash"),
    pytest.param('{"token": ""}', "must not be empty", id="empty token"),
    pytest.param('{"token": "t1", "domains": ["exa mple.com"]}', "not a hostname", id="bad domain"),
    pytest.param('{"token": "t1", "ips": ["192.168.1.1"]}', "private (RFC 1918)", id="private ip"),
    pytest.param('{"token": "t1", "domains": ["a.t", "b.t", "c.t", "d.t", "e.t", "f.t"]}',
                 "at most 5 entries; the line gives 6", id="over the limit"),
    pytest.param('{"token": "tok_000001"}', "the same token as line 2", id="duplicate token"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "says"), BAD_LINES)
def test_a_bad_line_is_reported_by_number_and_nothing_is_written(
    cli: Cli, tmp_path: Path, redis_url: str, bad: str, says: str
) -> None:
    good = [json.dumps(record(n)) for n in range(4)]
    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join([*good[:2], bad, *good[2:]]) + "\n")
    result = cli("import", str(path))
    assert result.code == 1
    (report,) = [line for line in result.err.splitlines() if "line 3:" in line]
    assert says in report
    assert "1 bad line(s)" in result.err
    assert "nothing was imported" in result.err
    assert redis.Redis.from_url(redis_url).keys() == [b"tav:marker"]
    assert "t1" not in result.err.replace("line 3", "")  # a token is never echoed


def test_every_bad_line_is_reported(cli: Cli, tmp_path: Path) -> None:
    lines = [json.dumps(record(n)) for n in range(6)]
    lines[1] = "{"
    lines[4] = json.dumps(record(4, ips=["127.0.0.1"]))
    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli("import", str(path), "--dry-run")
    assert result.code == 1
    assert "line 2:" in result.err
    assert "line 5: '127.0.0.1' is not a static public address: 127.0.0.0/8 is loopback" in result.err
    assert "2 bad line(s)" in result.err


def test_import_of_a_missing_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    result = cli("import", str(tmp_path / "missing.jsonl"))
    assert result.code == 1
    assert "cannot read" in result.err


def test_import_allow_private(cli: Cli, store: Direct, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [{"token": TOKEN, "ips": ["10.0.0.1"]}])
    assert cli("import", str(path)).code == 1
    assert cli("import", str(path), "--allow-private").code == 0
    assert store.get(TOKEN) == Restrictions(ips=["10.0.0.1"], version=1)


def test_import_shows_a_progress_bar_on_a_terminal_only(initialised: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "tokens.jsonl", [record(n) for n in range(300)])
    drawn = run_on_terminal(["import", str(path), "--batch-size", "10"], initialised, stream="stderr")
    assert "importing" in drawn
    assert "━" in drawn
    piped = Cli(initialised)("import", str(path), "--batch-size", "10")
    assert piped.code == 0
    assert piped.err == ""


# ------------------------------------------------------------------------------ export


def hash_of(cli: Cli, token: str) -> str:
    result = cli("export")
    fingerprint = cli("show", token, "--json").json()["token"]
    (line,) = [line for line in result.out.splitlines() if line.startswith(f'{{"hash":"{fingerprint}')]
    token_hash: str = json.loads(line)["hash"]
    return token_hash


def test_export_writes_one_line_per_token_named_by_hash(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"], ips=["203.0.113.7"], on=["domain"])
    store.given("another", ips=["2001:db8::/48"], on=["ip"])
    result = cli("export")
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert len(lines) == 2
    assert [line["hash"] for line in lines] == sorted(line["hash"] for line in lines)
    mine = next(line for line in lines if line["domains"])
    assert mine == {
        "hash": mine["hash"],
        "domain_enabled": True,
        "ip_enabled": False,
        "domains": ["app.example.com"],
        "ips": ["203.0.113.7"],
        "mode": "enforce",
    }
    assert "do_not_print" not in result.out


def test_export_to_a_file_equals_export_to_standard_output(cli: Cli, store: Direct, tmp_path: Path) -> None:
    for n in range(30):
        store.given(f"tok_{n}", domains=[f"d{n}.example.com"])
    result = cli("export", str(tmp_path / "out.jsonl"))
    assert result.code == 0
    assert "exported 30 records" in result.out
    assert (tmp_path / "out.jsonl").read_text() == cli("export").out
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_export_import_round_trip_is_equal(cli: Cli, redis_url: str, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "tokens.jsonl", [record(n) for n in range(1200)])
    assert cli("import", str(source)).code == 0
    exported = tmp_path / "export.jsonl"
    assert cli("export", str(exported), "--batch-size", "100").code == 0
    other = Cli(second_database(redis_url))
    result = other("import", "--restore", str(exported))
    assert result.code == 0, result.err
    assert "1200 created" in result.out
    assert other("export").out == exported.read_text()
    assert other("show", "tok_000042", "--json").json() == cli("show", "tok_000042", "--json").json()
    assert other("import", str(exported), "--json").json()["unchanged"] == 1200


def test_an_export_needs_the_same_secret_to_mean_the_same_tokens(
    cli: Cli, redis_url: str, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "tokens.jsonl", [record(1)])
    cli("import", str(source))
    exported = tmp_path / "export.jsonl"
    cli("export", str(exported))
    other = Cli(second_database(redis_url))
    other("import", "--restore", str(exported))
    assert other("show", "tok_000001", "--json").json()["stored"] is True
    # Another secret names other keys, and the marker says the store is not its own.
    assert other("--secret", SECRET + "-other", "show", "tok_000001", "--json").code == 3


# ------------------------------------------------------------------------------ history


def test_every_write_command_records_one_history_entry(cli: Cli, tmp_path: Path) -> None:
    cli("domains", "add", TOKEN, "a.example.com", "b.example.com")
    cli("domains", "add", TOKEN, "a.example.com")  # changes nothing: no entry
    cli("ips", "set", TOKEN, "203.0.113.7")
    cli("enable", TOKEN, "ip")
    cli("domains", "remove", TOKEN, "a.example.com", "never.example.com")
    cli("import", str(write_lines(tmp_path / "t.jsonl", [{"token": TOKEN, "domains": ["c.example.com"]}])))
    result = cli("history", TOKEN, "--json")
    assert result.code == 0
    entries = result.json()["history"]
    assert [(e["version"], e["op"], e["restriction"], e["entries"]) for e in entries] == [
        (5, "put", None, []),
        (4, "remove", "domain", ["a.example.com"]),
        (3, "enable", "ip", []),
        (2, "set", "ip", ["203.0.113.7"]),
        (1, "add", "domain", ["a.example.com", "b.example.com"]),
    ]
    assert entries[0]["domains"] == ["c.example.com"]
    assert all(e["at"] <= time.time() * 1000 + 5000 for e in entries)
    assert entries[0]["time"].endswith("Z")
    plain = cli("history", TOKEN)
    assert "add domain: a.example.com, b.example.com" in plain.out
    assert "put: domain off [c.example.com], ip off [-]" in plain.out


def test_history_is_capped(cli: Cli, store: Direct) -> None:
    for n in range(60):
        store.given(TOKEN, domains=[f"d{n}.example.com"])
    entries = cli("history", TOKEN, "--json").json()["history"]
    assert len(entries) == 50
    assert entries[0]["version"] == 60
    assert len(cli("history", TOKEN, "-n", "3", "--json").json()["history"]) == 3


def test_history_of_an_unknown_token(cli: Cli) -> None:
    result = cli("history", TOKEN)
    assert result.code == 0
    assert "no history" in result.out


# ------------------------------------------------------------------------------ scale and concurrency


def test_import_of_100000_tokens(cli: Cli, tmp_path: Path, redis_url: str) -> None:
    path = write_lines(tmp_path / "tokens.jsonl", [record(n) for n in range(100_000)])
    started = time.monotonic()
    result = cli("import", str(path), "--json", timeout=120)
    elapsed = time.monotonic() - started
    assert result.code == 0, result.err
    assert result.json()["created"] == 100_000
    client = redis.Redis.from_url(redis_url)
    assert sum(1 for _ in client.scan_iter(match="tav:{*}:m", count=1000)) == 100_000
    assert elapsed < 90


def test_concurrent_adds_from_many_processes_never_exceed_the_limit(initialised: str) -> None:
    adders = [
        subprocess.Popen(
            command("domains", "add", TOKEN, f"site{n}.example.com"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(initialised),
        )
        for n in range(24)
    ]
    outcomes = []
    for adder in adders:
        _, err = adder.communicate(timeout=60)
        outcomes.append((adder.returncode, err))
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0] * 5 + [1] * 19
    assert all("at most 5 entries" in err for code, err in outcomes if code == 1)
    stored = Direct(initialised).get(TOKEN)
    assert stored is not None
    assert len(stored.domains) == 5
    assert stored.version == 5


def unpack(line: dict[str, Any]) -> dict[str, Any]:
    on = [name for name, field in (("domain", "domain_enabled"), ("ip", "ip_enabled")) if line[field]]
    return {"domains": line["domains"], "ips": line["ips"], "on": on}
