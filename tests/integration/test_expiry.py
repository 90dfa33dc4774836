"""Entries that expire (issue 16, part 3), against a real redis-server: the command line, the
lapse in running validators without any write, the slot a lapsed entry frees under concurrent
writers, the history, no orphan expiry field, export and import."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.integration.test_cli_support import SECRET, Cli, Direct
from validator import Admin, InvalidEntry, LimitExceeded, Restrictions, Validator
from validator.admin.api import Change, ImportLine

pytestmark = [pytest.mark.promise("P-EXPIRY")]

TOKEN = "tok_live_expiry_3f9a2c"


@pytest.fixture
async def admin(initialised: str) -> AsyncIterator[Admin]:
    admin = Admin.from_url(initialised, secret=SECRET)
    yield admin
    await admin.close()


async def _meta(admin: Admin, token: str) -> dict[str, str]:
    """The token's meta hash as stored (the expiry fields included)."""
    client = aioredis.Redis.from_url(admin.store.url, decode_responses=True)
    try:
        meta: dict[str, str] = await client.hgetall(admin.store.keys(admin.token_hash(token))[0])  # type: ignore[assignment]
        return meta
    finally:
        await client.aclose()


def _no_orphans(meta: dict[str, str], stored: Restrictions | None) -> None:
    members = {"d": set(stored.domains if stored else ()), "i": set(stored.ips if stored else ())}
    for field in meta:
        if field.startswith("x:"):
            assert field[4:] in members[field[2]], f"orphan expiry field {field}"


async def _past(at_ms: int) -> None:
    """Wait until the wall clock is past `at_ms` (an instant passing sends no event to await),
    10 ms more for the event loop's clock, which is not the wall clock."""
    wait = at_ms / 1000 - time.time() + 0.01
    assert wait < 10, "the instant is too far off for a test"
    await asyncio.sleep(max(0.0, wait))
    assert time.time() * 1000 > at_ms


# ------------------------------------------------------------------------------ the command line


def test_add_for_stores_the_instant_and_show_says_the_time_left(cli: Cli, initialised: str) -> None:
    before = time.time()
    added = cli("ips", "add", TOKEN, "203.0.113.7", "--for", "2h")
    assert added.code == 0, added.err
    assert "203.0.113.7 (" in added.out and "left)" in added.out
    cli("ips", "add", TOKEN, "198.51.100.1")
    stored = Direct(initialised).get(TOKEN)
    assert stored is not None and set(stored.ip_expiry) == {"203.0.113.7"}
    assert (before + 7200) * 1000 - 60_000 <= stored.ip_expiry["203.0.113.7"] <= (time.time() + 7200) * 1000
    shown = cli("show", TOKEN)
    assert "203.0.113.7 (1h 59m left)" in shown.out or "203.0.113.7 (2h left)" in shown.out
    data = cli("show", TOKEN, "--json").json()
    at = datetime.fromisoformat(data["ip_expiry"]["203.0.113.7"])
    assert at.timestamp() * 1000 == pytest.approx(stored.ip_expiry["203.0.113.7"], abs=1)
    assert data["ips"] == ["198.51.100.1", "203.0.113.7"]


def test_add_until_an_instant_and_set_for_a_duration(cli: Cli, initialised: str) -> None:
    assert cli("domains", "add", TOKEN, "app.example.com", "--until", "2099-12-31T18:00Z").code == 0
    assert cli("domains", "set", TOKEN, "a.example.com", "b.example.com", "--for", "1d").code == 0
    stored = Direct(initialised).get(TOKEN)
    assert stored is not None and stored.domains == ["a.example.com", "b.example.com"]
    assert set(stored.domain_expiry) == {"a.example.com", "b.example.com"}


def test_set_takes_its_entries_after_the_expiry_option_too(cli: Cli, initialised: str) -> None:
    # argparse leaves an optional entry list empty once an option came between (the model test
    # found `set TOKEN --until T ENTRY` refused as a usage error).
    until = ("--until", "2099-12-31T18:00Z")
    assert cli("domains", "set", TOKEN, *until, "a.example.com", "b.example.com").code == 0
    stored = Direct(initialised).get(TOKEN)
    assert stored is not None and stored.domains == ["a.example.com", "b.example.com"]
    assert set(stored.domain_expiry) == {"a.example.com", "b.example.com"}
    assert cli("domains", "set", TOKEN, *until, "a.example.com", "--bogus").code == 2


# argv -> expected exit code; each refusal is one line on stderr, nothing written
REFUSED: dict[str, tuple[list[str], int]] = {
    "a past instant": (["--until", "2001-01-01T00:00Z"], 1),
    "an instant without zone": (["--until", "2099-12-31T18:00"], 2),
    "a zero duration": (["--for", "0m"], 2),
    "a duration that is no duration": (["--for", "soon"], 2),
    "both": (["--for", "2h", "--until", "2099-12-31T18:00Z"], 2),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_nonsense_expiries_are_refused_with_one_line(cli: Cli, initialised: str, case: str) -> None:
    argv, code = REFUSED[case]
    refused = cli("ips", "add", TOKEN, "203.0.113.7", *argv)
    assert refused.code == code
    assert len(refused.err.strip().splitlines()) == 1 if code == 1 else "error" in refused.err
    assert "Traceback" not in refused.err
    assert Direct(initialised).get(TOKEN) is None


# ------------------------------------------------------------------------------ lapsing


async def test_an_entry_lapses_at_its_instant_in_two_validators_without_any_write(
    admin: Admin, initialised: str
) -> None:
    await admin.add_ips(TOKEN, ["198.51.100.1"])
    await admin.enable(TOKEN, "ip")
    async with (
        Validator.from_url(initialised, secret=SECRET) as one,
        Validator.from_url(initialised, secret=SECRET) as two,
    ):
        change = await admin.add_ips(TOKEN, ["203.0.113.7"], expires_in=timedelta(seconds=1.5))
        assert change.restrictions is not None
        at = change.restrictions.ip_expiry["203.0.113.7"] / 1000
        version = change.restrictions.version
        for validator in (one, two):
            await validator.sync()  # the add's invalidation is in: what is read next stays cached
            assert (await validator.check(TOKEN, client_ip="203.0.113.7")).allowed
        assert time.time() < at, "the machine was too slow to see the entry match first"
        assert one.stats.misses == two.stats.misses == 1
        await _past(int(at * 1000))
        for validator in (one, two):
            # No longer fresh (no event came: fresh until the instant), read once again.
            assert validator.check_cached(TOKEN, client_ip="203.0.113.7") is None
            assert not (await validator.check(TOKEN, client_ip="203.0.113.7")).allowed
            assert (await validator.check(TOKEN, client_ip="198.51.100.1")).allowed
            assert validator.stats.misses == 2
    # Nothing was written: the entry is still in Redis, and lapsed for any reader.
    stored = await admin.get(TOKEN)
    assert stored is not None and stored.version == version and "203.0.113.7" in stored.ips
    async with Validator.from_url(initialised, secret=SECRET) as fresh:
        assert not (await fresh.check(TOKEN, client_ip="203.0.113.7")).allowed
    assert not (await admin.explain(TOKEN, client_ip="203.0.113.7")).allowed


async def test_lapsed_entries_free_their_slot_under_concurrent_writers(admin: Admin) -> None:
    await admin.add_ips(TOKEN, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    change = await admin.add_ips(TOKEN, ["203.0.113.7", "203.0.113.8"], expires_in=timedelta(seconds=1))
    assert change.restrictions is not None and len(change.restrictions.ips) == 5
    at = change.restrictions.next_expiry
    assert at is not None
    with pytest.raises(LimitExceeded):
        await admin.add_ips(TOKEN, ["192.0.2.200"], allow_private=True)
    await _past(at)
    newcomers = [f"192.0.2.{n}" for n in range(1, 21)]
    outcomes: list[Change | BaseException] = await asyncio.gather(
        *(admin.add_ips(TOKEN, [ip], allow_private=True) for ip in newcomers), return_exceptions=True
    )
    added = [o for o in outcomes if isinstance(o, Change)]
    refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
    assert (len(added), len(refused)) == (2, 18), outcomes
    stored = await admin.get(TOKEN)
    assert stored is not None and len(stored.ips) == 5 and stored.ip_expiry == {}
    assert {"198.51.100.1", "198.51.100.2", "198.51.100.3"} <= set(stored.ips)
    history = await admin.history(TOKEN)
    expired = [entry for entry in history if entry.op == "expire"]
    assert len(expired) == 1
    assert (expired[0].restriction, sorted(expired[0].entries)) == ("ip", ["203.0.113.7", "203.0.113.8"])
    assert expired[0].at >= at
    versions = [entry.version for entry in history]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    _no_orphans(await _meta(admin, TOKEN), stored)


# ------------------------------------------------------------------------------ the write path

IN_1H = timedelta(hours=1)
IN_2H = timedelta(hours=2)


async def _readd_later(admin: Admin) -> Change:
    await admin.add_domains(TOKEN, ["a.example.com"], expires_in=IN_1H)
    return await admin.add_domains(TOKEN, ["a.example.com"], expires_in=IN_2H)


async def _readd_permanent(admin: Admin) -> Change:
    await admin.add_domains(TOKEN, ["a.example.com"], expires_in=IN_1H)
    return await admin.add_domains(TOKEN, ["a.example.com"])


async def _readd_same(admin: Admin) -> Change:
    at = datetime.now(UTC) + IN_1H
    await admin.add_domains(TOKEN, ["a.example.com"], expires_at=at)
    return await admin.add_domains(TOKEN, ["a.example.com"], expires_at=at)


async def _make_expiring(admin: Admin) -> Change:
    await admin.add_domains(TOKEN, ["a.example.com"])
    return await admin.add_domains(TOKEN, ["a.example.com"], expires_in=IN_1H)


async def _remove(admin: Admin) -> Change:
    await admin.add_domains(TOKEN, ["a.example.com", "b.example.com"], expires_in=IN_1H)
    return await admin.remove_domains(TOKEN, ["a.example.com"])


async def _set_permanent(admin: Admin) -> Change:
    await admin.add_domains(TOKEN, ["a.example.com", "b.example.com"], expires_in=IN_1H)
    return await admin.set_domains(TOKEN, ["b.example.com", "c.example.com"])


async def _set_same_members_expiring(admin: Admin) -> Change:
    await admin.set_domains(TOKEN, ["a.example.com"])
    return await admin.set_domains(TOKEN, ["a.example.com"], expires_in=IN_1H)


async def _clear(admin: Admin) -> Change:
    await admin.add_domains(TOKEN, ["a.example.com"], expires_in=IN_1H)
    return await admin.clear_domains(TOKEN)


async def _put_then_without(admin: Admin) -> Change:
    at = int((time.time() + 3600) * 1000)
    record = Restrictions(domain_enabled=True, domains=["a.example.com"], domain_expiry={"a.example.com": at})
    await admin.put(TOKEN, record)
    return await admin.put(TOKEN, Restrictions(domain_enabled=True, domains=["a.example.com"]))


async def _put_expiring(admin: Admin) -> Change:
    at = int((time.time() + 3600) * 1000)
    record = Restrictions(
        domain_enabled=True,
        domains=["a.example.com", "b.example.com"],
        domain_expiry={"a.example.com": at},
    )
    return await admin.put(TOKEN, record)


# name -> (the writes, whether the last one changed something, domains with an expiry after it)
WRITES: dict[str, tuple[Callable[[Admin], Awaitable[Change]], bool, set[str]]] = {
    "re-added with a later expiry: the new one": (_readd_later, True, {"a.example.com"}),
    "re-added without expiry: permanent": (_readd_permanent, True, set()),
    "re-added with the same expiry: unchanged": (_readd_same, False, {"a.example.com"}),
    "a permanent entry re-added with an expiry": (_make_expiring, True, {"a.example.com"}),
    "removed: its field goes": (_remove, True, {"b.example.com"}),
    "set without expiry: every field goes": (_set_permanent, True, set()),
    "set again, now expiring: a change": (_set_same_members_expiring, True, {"a.example.com"}),
    "cleared: every field goes": (_clear, True, set()),
    "put without the expiry: permanent": (_put_then_without, True, set()),
    "put with one expiry": (_put_expiring, True, {"a.example.com"}),
}


@pytest.mark.parametrize("case", WRITES, ids=list(WRITES))
async def test_every_write_keeps_the_expiry_fields_consistent(admin: Admin, case: str) -> None:
    writes, changed, expiring = WRITES[case]
    before = await admin.get(TOKEN)
    change = await writes(admin)
    stored = await admin.get(TOKEN)
    assert change.changed is changed
    assert stored is not None and set(stored.domain_expiry) == expiring
    assert stored == change.restrictions
    assert stored.version > (before.version if before else 0)
    _no_orphans(await _meta(admin, TOKEN), stored)


async def test_the_store_refuses_an_instant_its_own_clock_has_passed(admin: Admin) -> None:
    # The admin's clock may be ahead of the server's: the script checks by the server's.
    for options in ({"expires_at": "1000"}, {"expires_in": "0"}):
        with pytest.raises(InvalidEntry, match="already passed"):
            await admin.store.write(admin.token_hash(TOKEN), "add", "i", "203.0.113.7", options=options)
    assert await admin.get(TOKEN) is None


async def test_delete_leaves_no_field_behind(admin: Admin) -> None:
    await admin.add_domains(TOKEN, ["a.example.com"], expires_in=IN_1H)
    assert await admin.delete(TOKEN)
    assert await _meta(admin, TOKEN) == {}


async def test_history_says_until_when_an_entry_was_added(admin: Admin) -> None:
    change = await admin.add_ips(TOKEN, ["203.0.113.7"], expires_in=IN_1H)
    assert change.restrictions is not None
    (entry,) = await admin.history(TOKEN)
    assert (entry.op, entry.entries, entry.expires_at) == (
        "add",
        ["203.0.113.7"],
        change.restrictions.ip_expiry["203.0.113.7"],
    )


# ------------------------------------------------------------------------------ export, import


def test_export_and_import_carry_expiries(cli: Cli, initialised: str, tmp_path: Path) -> None:
    assert cli("ips", "add", TOKEN, "203.0.113.7", "--for", "2h").code == 0
    assert cli("ips", "add", TOKEN, "198.51.100.1").code == 0
    assert cli("enable", TOKEN, "ip").code == 0
    exported = tmp_path / "export.jsonl"
    assert cli("export", str(exported)).code == 0
    (line,) = [json.loads(raw) for raw in exported.read_text().splitlines()]
    stored = Direct(initialised).get(TOKEN)
    assert stored is not None and line["ip_expiry"] == stored.ip_expiry
    assert "domain_expiry" not in line  # only what expires: an old reader sees its format

    assert cli("delete", TOKEN).code == 0
    imported = cli("import", str(exported))
    assert imported.code == 0, imported.err
    again = Direct(initialised).get(TOKEN)
    assert again is not None
    assert (again.ips, again.ip_expiry, again.ip_enabled) == (stored.ips, stored.ip_expiry, True)
    assert "0 changed, 1 unchanged" in cli("import", str(exported)).out


def test_an_import_drops_an_entry_already_lapsed_and_says_so(
    cli: Cli, initialised: str, tmp_path: Path
) -> None:
    lapsed = {
        "token": TOKEN,
        "ip_enabled": True,
        "ips": ["203.0.113.7", "198.51.100.1"],
        "ip_expiry": {"203.0.113.7": 1_000_000_000_000},
    }
    path = tmp_path / "import.jsonl"
    path.write_text(json.dumps(lapsed) + "\n")
    imported = cli("import", str(path))
    assert imported.code == 0, imported.err
    assert "'203.0.113.7': its expiry has passed, left out" in imported.err
    stored = Direct(initialised).get(TOKEN)
    assert stored is not None and (stored.ips, stored.ip_expiry) == (["198.51.100.1"], {})


# line -> what the refusal names
BAD_LINES: dict[str, tuple[dict[str, Any], str]] = {
    "an expiry for an entry not listed": (
        {"token": TOKEN, "ips": ["198.51.100.1"], "ip_expiry": {"203.0.113.7": 4_000_000_000_000}},
        "not in the IP list",
    ),
    "an instant that is no instant": (
        {"token": TOKEN, "ips": ["203.0.113.7"], "ip_expiry": {"203.0.113.7": 10**16}},
        "not an instant",
    ),
    "an instant as text": (
        {"token": TOKEN, "ips": ["203.0.113.7"], "ip_expiry": {"203.0.113.7": "tomorrow"}},
        "Expected `int`",
    ),
}


@pytest.mark.parametrize("case", BAD_LINES, ids=list(BAD_LINES))
def test_an_import_line_with_a_bad_expiry_is_refused(
    cli: Cli, initialised: str, tmp_path: Path, case: str
) -> None:
    line, reason = BAD_LINES[case]
    path = tmp_path / "import.jsonl"
    path.write_text(json.dumps(line) + "\n")
    refused = cli("import", str(path))
    assert refused.code == 1 and reason in refused.err
    assert Direct(initialised).get(TOKEN) is None


async def test_learning_keeps_a_temporary_entry_temporary(admin: Admin) -> None:
    # `learn` and `suggest --apply` rewrite the whole record: an expiry must survive them.
    change = await admin.add_ips(TOKEN, ["203.0.113.7"], expires_in=IN_1H)
    assert change.restrictions is not None
    await admin.learn(TOKEN)
    stored = await admin.get(TOKEN)
    assert stored is not None and stored.mode.value == "report"
    assert stored.ip_expiry == change.restrictions.ip_expiry
    suggestion = await admin.suggest(TOKEN)
    assert "203.0.113.7" in suggestion.ips.entries
    assert suggestion.record().ip_expiry == change.restrictions.ip_expiry


# ------------------------------------------------------------------------------ every deployment


async def test_a_lapsed_entry_is_swept_and_recorded_on_every_backend(store_url: str) -> None:
    # On a Redis Cluster the marker is checked apart from the script: the sweep must not need it.
    admin = Admin.from_url(store_url, secret=SECRET)
    try:
        await admin.init()
        await admin.enable(TOKEN, "ip")
        change = await admin.add_ips(TOKEN, ["203.0.113.7"], expires_in=timedelta(milliseconds=300))
        assert change.restrictions is not None
        at = change.restrictions.next_expiry
        assert at is not None
        async with Validator.from_url(store_url, secret=SECRET) as validator:
            # Read before the instant or after it: either way no match once it has passed.
            await _past(at)
            assert not (await validator.check(TOKEN, client_ip="203.0.113.7")).allowed
        await admin.add_ips(TOKEN, ["198.51.100.1"])
        stored = await admin.get(TOKEN)
        assert stored is not None and (stored.ips, stored.ip_expiry) == (["198.51.100.1"], {})
        assert [e.op for e in await admin.history(TOKEN)][:2] == ["add", "expire"]
    finally:
        await admin.close()


async def test_import_carries_expiries_on_every_backend(store_url: str) -> None:
    # Pipelined puts (import, restore) pass each record's expiries as its own options.
    admin = Admin.from_url(store_url, secret=SECRET)
    try:
        await admin.init()
        at = int((time.time() + 3600) * 1000)
        lines = [
            ImportLine(token=f"{TOKEN}-{n}", ip_enabled=True, ips=["203.0.113.7", "198.51.100.1"])
            for n in range(3)
        ]
        lines[1].ip_expiry = {"203.0.113.7": at}
        lines[2].ip_expiry = {"203.0.113.7": at, "198.51.100.1": at + 1}
        await admin.put_many([admin.prepare(line) for line in lines])
        stored = [await admin.get(f"{TOKEN}-{n}") for n in range(3)]
        assert [s.ip_expiry if s else None for s in stored] == [line.ip_expiry for line in lines]
    finally:
        await admin.close()
