"""`validator-admin suggest` (issue 16, part 1): learn a token's allowlist from what real
validators recorded in report-only mode, then apply and enforce it, on a real redis-server."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from tests.integration.test_cli_support import SECRET, Cli, Direct, command, environment
from tests.redis_cluster import Backend
from validator import Admin, Mode, Restrictions, Validator
from validator.errors import InvalidEntry, StoreNotInitialised

pytestmark = [pytest.mark.promise("P-SUGGEST")]

TOKEN = "tok_live_suggest_do_not_print"

Request = dict[str, Any]


def origins(host: str, times: int) -> list[Request]:
    return [{"origin": f"https://{host}"}] * times


def servers(address: str, times: int) -> list[Request]:
    return [{"client_ip": address}] * times


# A week of traffic in miniature: six sites (one more than the limit of 5), two public servers
# and one on a private network.
TRAFFIC = [
    *origins("app.example.com", 7),
    *origins("www.example.net", 6),
    *origins("example.org", 5),
    *origins("shop.example.edu", 4),
    *origins("api.example.io", 3),
    *origins("rare.example.info", 1),
    *servers("203.0.113.7", 4),
    *servers("198.51.100.9", 2),
    *servers("10.0.0.5", 1),
]


async def through_validators(url: str, *batches: Sequence[Request], **settings: Any) -> list[list[bool]]:
    """Each batch of requests through its own Validator (another process, as far as Redis can
    tell), all running at once; waits until every one has written its denial log."""
    validators = [Validator.from_url(url, secret=SECRET, **settings) for _ in batches]
    try:
        allowed = []
        for validator, batch in zip(validators, batches, strict=True):
            allowed.append([(await validator.check(TOKEN, **request)).allowed for request in batch])
        for validator in validators:
            assert validator.denial_log is not None
            await asyncio.wait_for(validator.denial_log.flush(), 10)
        return allowed
    finally:
        for validator in validators:
            await validator.close()


def drive(url: str, *batches: Sequence[Request], **settings: Any) -> list[list[bool]]:
    return asyncio.run(through_validators(url, *batches, **settings))


async def learning(admin: Admin, token: str = TOKEN) -> None:
    """The token as an admin sets it up to learn: both restrictions on with empty lists (every
    request is a would-be denial, so every one is recorded), in report-only mode."""
    change = await admin.learn(token)
    assert change.restrictions is not None and change.restrictions.mode is Mode.REPORT


def set_up_learning(url: str) -> None:
    async def run() -> None:
        admin = Admin.from_url(url, secret=SECRET)
        try:
            await learning(admin)
        finally:
            await admin.close()

    asyncio.run(run())


@pytest.fixture
def learnt(initialised: str) -> str:
    """The store after TRAFFIC went through a validator while TOKEN was learning."""
    set_up_learning(initialised)
    assert drive(initialised, TRAFFIC) == [[True] * len(TRAFFIC)]  # report-only: all let through
    return initialised


# ------------------------------------------------------------------------------ learn, then enforce


def test_learn_then_enforce(learnt: str, cli: Cli, store: Direct) -> None:
    proposal = cli("suggest", TOKEN, "--json")
    assert proposal.code == 0, proposal.err
    s = proposal.json()
    assert s["report_only"] is True
    assert s["denials"] == len(TRAFFIC)
    # The top five sites by traffic; the sixth is shown, over the limit.
    assert s["domains"]["added"] == [
        "app.example.com",
        "www.example.net",
        "example.org",
        "shop.example.edu",
        "api.example.io",
    ]
    assert s["ips"]["added"] == ["203.0.113.7", "198.51.100.9"]
    seen = {o["seen"]: o for o in s["observations"]}
    assert (seen["app.example.com"]["count"], seen["app.example.com"]["status"]) == (7, "proposed")
    assert (seen["rare.example.info"]["status"], seen["rare.example.info"]["entry"]) == (
        "over_limit",
        "rare.example.info",
    )
    # The private address is shown with why, never proposed.
    assert seen["10.0.0.5"]["status"] == "refused"
    assert "10.0.0.0/8 is private" in seen["10.0.0.5"]["why"]
    # The cost: 1 of 26 front-end, 1 of 7 back-end, 2 of 33 requests would still be denied.
    assert (s["domains"]["still_denied"], s["domains"]["observed"]) == (1, 26)
    assert (s["ips"]["still_denied"], s["ips"]["observed"]) == (1, 7)
    assert s["share_denied"] == pytest.approx(2 / 33)
    assert store.get(TOKEN) == Restrictions(domain_enabled=True, ip_enabled=True, version=1, mode=Mode.REPORT)

    applied = cli("suggest", TOKEN, "--apply", "--enforce", "--yes")
    assert applied.code == 0, applied.err
    assert "enforcing" in applied.out
    stored = store.get(TOKEN)
    assert stored is not None
    assert (stored.domain_enabled, stored.ip_enabled, stored.mode) == (True, True, Mode.ENFORCE)
    assert sorted(stored.domains) == sorted(s["domains"]["added"])
    assert sorted(stored.ips) == ["198.51.100.9", "203.0.113.7"]

    # Enforced: a proposed site and server pass, the rest get the 403.
    requests = [
        {"origin": "https://www.example.net"},
        {"origin": "https://rare.example.info"},
        {"client_ip": "203.0.113.7"},
        {"client_ip": "10.0.0.5"},
    ]
    assert drive(learnt, requests) == [[True, False, True, False]]


def test_the_table_says_what_it_proposes_and_what_it_costs(learnt: str, cli: Cli) -> None:
    result = cli("suggest", TOKEN)
    assert result.code == 0, result.err
    assert "REPORT-ONLY" in result.out
    assert "propose app.example.com" in result.out
    assert "over the limit: rare.example.info not proposed" in result.out
    assert "refused: '10.0.0.5' is not a static public address" in result.out
    assert "would still deny 3.8% of 26 front-end requests seen" in result.out
    assert "would still deny 14.3% of 7 back-end requests seen" in result.out
    assert "would still deny 6.1% of 33 requests seen" in result.out
    assert "suggest TOKEN --apply" in result.out


def test_the_table_shows_the_top_rows_and_counts_the_rest(learnt: str, cli: Cli) -> None:
    result = cli("suggest", TOKEN, "-n", "2")
    assert result.code == 0, result.err
    assert "app.example.com" in result.out and "www.example.net" in result.out
    assert "rare.example.info" not in result.out
    assert "... and 7 more seen, 20 requests in all" in result.out
    assert "would still deny 6.1% of 33 requests seen" in result.out


def test_apply_alone_writes_the_lists_and_keeps_report_only(learnt: str, cli: Cli, store: Direct) -> None:
    result = cli("suggest", TOKEN, "--apply", "--yes")
    assert result.code == 0, result.err
    assert "still report-only" in result.out
    stored = store.get(TOKEN)
    assert stored is not None
    assert (stored.mode, len(stored.domains), len(stored.ips)) == (Mode.REPORT, 5, 2)
    # Applying it again changes nothing (no new version).
    again = cli("suggest", TOKEN, "--apply", "--yes")
    assert again.code == 0, again.err
    assert "unchanged" in again.out


def test_the_limit_is_the_stores(learnt: str, cli: Cli, store: Direct) -> None:
    s = cli("suggest", TOKEN, "--limit", "2", "--json").json()
    assert s["limit"] == 2
    assert s["domains"]["entries"] == ["app.example.com", "www.example.net"]
    assert cli("suggest", TOKEN, "--limit", "2", "--apply", "--yes").code == 0
    stored = store.get(TOKEN)
    assert stored is not None and len(stored.domains) == 2


def test_json_shape(learnt: str, cli: Cli) -> None:
    s = cli("suggest", TOKEN, "--json").json()
    assert set(s) == {
        "token", "stored", "report_only", "current", "limit", "entries_read", "denials",
        "still_denied", "share_denied", "oldest", "newest", "domains", "ips", "wildcards",
        "observations", "proposed", "summary", "floods",
    }  # fmt: skip
    assert set(s["domains"]) == {
        "stored", "entries", "added", "enabled", "observed", "still_denied", "share_denied"
    }  # fmt: skip
    assert set(s["observations"][0]) == {
        "kind", "seen", "count", "first_ms", "last_ms", "first", "last", "status", "entry", "why",
        "clients", "weight",
    }  # fmt: skip
    assert s["oldest"].endswith("Z") and s["newest"] >= s["oldest"]
    assert s["proposed"]["mode"] == "enforce"
    assert s["proposed"]["domain_enabled"] and s["proposed"]["ip_enabled"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(None, Restrictions(domain_enabled=True, ip_enabled=True), id="nothing stored: created"),
        pytest.param(
            Restrictions(ip_enabled=True, domains=["app.example.com"], ips=["10.0.0.7"]),
            Restrictions(domain_enabled=True, ip_enabled=True, domains=["app.example.com"], ips=["10.0.0.7"]),
            id="lists kept, a private address included",
        ),
    ],
)
def test_learn_starts_learning_in_one_write(
    initialised: str, cli: Cli, store: Direct, given: Restrictions | None, expected: Restrictions
) -> None:
    if given is not None:
        asyncio.run(_put(initialised, given))
    result = cli("suggest", TOKEN, "--learn", "--yes")
    assert result.code == 0, result.err
    assert "learning: report-only" in result.out
    stored = store.get(TOKEN)
    assert stored is not None
    assert (stored.domain_enabled, stored.ip_enabled, stored.domains, stored.ips, stored.mode) == (
        expected.domain_enabled,
        expected.ip_enabled,
        expected.domains,
        expected.ips,
        Mode.REPORT,
    )
    # Learning: nothing is refused, everything the lists do not allow is recorded.
    assert drive(initialised, [*origins("www.example.net", 1), *servers("203.0.113.7", 1)]) == [[True, True]]
    seen = {o["seen"] for o in cli("suggest", TOKEN, "--json").json()["observations"]}
    assert seen == {"www.example.net", "203.0.113.7"}
    assert cli("suggest", TOKEN, "--learn", "--apply", "--yes").code == 2
    assert cli("suggest", TOKEN, "--learn", stdin="").code == 2


async def _put(url: str, record: Restrictions) -> None:
    admin = Admin.from_url(url, secret=SECRET)
    try:
        await admin.put(TOKEN, record, allow_private=True)
    finally:
        await admin.close()


# ------------------------------------------------------------------------------ what it learns from


async def test_every_validators_records_are_merged(initialised: str) -> None:
    """Two validators (two processes, to Redis) each saw part of the traffic: one proposal."""
    admin = Admin.from_url(initialised, secret=SECRET)
    try:
        await learning(admin)
        await through_validators(
            initialised,
            [*origins("app.example.com", 2), *servers("203.0.113.7", 1)],
            [*origins("app.example.com", 3), *origins("www.example.net", 1)],
        )
        s = await admin.suggest(TOKEN)
    finally:
        await admin.close()
    assert {o.seen: o.count for o in s.observations} == {
        "app.example.com": 5,
        "203.0.113.7": 1,
        "www.example.net": 1,
    }
    assert s.observations[0].seen == "app.example.com"
    assert s.domains.entries == ["app.example.com", "www.example.net"]


async def test_a_flood_merged_by_the_writer_counts_every_request(initialised: str) -> None:
    admin = Admin.from_url(initialised, secret=SECRET)
    try:
        await learning(admin)
        # 300 cached checks queue before the writer runs: one batch, its repeats merged.
        await through_validators(initialised, [*origins("app.example.com", 299), *servers("203.0.113.7", 1)])
        s = await admin.suggest(TOKEN)
    finally:
        await admin.close()
    assert s.entries_read < 300
    assert [(o.seen, o.count) for o in s.observations] == [("app.example.com", 299), ("203.0.113.7", 1)]
    assert s.denials == 300


def test_a_public_suffix_wildcard_is_shown_never_proposed(initialised: str, cli: Cli) -> None:
    set_up_learning(initialised)
    drive(initialised, [r for n in range(7) for r in origins(f"site{n}.github.io", 1)])
    s = cli("suggest", TOKEN, "--json").json()
    assert [(w["entry"], w["proposed"]) for w in s["wildcards"]] == [("*.github.io", False)]
    assert "public suffix" in s["wildcards"][0]["why"]
    assert all(not entry.startswith("*") for entry in s["domains"]["entries"])
    assert len(s["domains"]["entries"]) == 5
    assert "not proposed: *.github.io" in cli("suggest", TOKEN).out


def test_subdomains_beyond_the_limit_become_a_wildcard(initialised: str, cli: Cli, store: Direct) -> None:
    set_up_learning(initialised)
    drive(initialised, [r for n in range(7) for r in origins(f"tenant{n}.example.com", 1)])
    s = cli("suggest", TOKEN, "--json").json()
    assert s["domains"]["entries"] == ["*.example.com"]
    assert s["share_denied"] == 0
    assert cli("suggest", TOKEN, "--enforce", "--yes").code == 0
    assert drive(
        initialised, [{"origin": "https://tenant3.example.com"}, {"origin": "https://example.com"}]
    ) == [[True, False]]


def test_a_token_without_a_record_learns_from_its_unknown_token_denials(
    initialised: str, cli: Cli, store: Direct
) -> None:
    drive(initialised, [*origins("app.example.com", 2), *servers("10.0.0.5", 1)], unknown_token="deny")
    s = cli("suggest", TOKEN, "--json").json()
    assert (s["stored"], s["domains"]["entries"], s["ips"]["entries"]) == (False, ["app.example.com"], [])
    assert cli("suggest", TOKEN, "--enforce", "--yes").code == 0
    stored = store.get(TOKEN)
    assert stored is not None
    # Only the domain list allows traffic seen: it alone is switched on (back end denied).
    assert (stored.domain_enabled, stored.ip_enabled, stored.mode) == (True, False, Mode.ENFORCE)


def test_enforcing_nothing_is_refused(initialised: str, cli: Cli, store: Direct) -> None:
    """Only a private server seen, nothing stored: enforcing would leave the token unrestricted."""
    drive(initialised, servers("10.0.0.5", 2), unknown_token="deny")
    result = cli("suggest", TOKEN, "--enforce", "--yes")
    assert result.code == 1
    assert "nothing to enforce" in result.err
    assert store.get(TOKEN) is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param((), 1, "no denials recorded, nothing to learn from", id="nothing recorded"),
        pytest.param(("--since", "2999-01-01T00:00:00Z"), 1, "no denials recorded since", id="nothing since"),
        pytest.param(("--since", "last week"), 2, "give a duration such as", id="a bad --since"),
        pytest.param(("--apply",), 2, "no terminal to confirm on: add --yes", id="no terminal, no --yes"),
        pytest.param(("--enforce", "--json"), 2, "--json shows nothing to confirm", id="--json, no --yes"),
    ],
)
def test_refusals(
    initialised: str, cli: Cli, store: Direct, args: tuple[str, ...], code: int, message: str
) -> None:
    store.given(TOKEN, on=["domain"])
    before = store.get(TOKEN)
    result = cli("suggest", TOKEN, *args, stdin="")
    assert (result.code, result.out) == (code, "")
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert store.get(TOKEN) == before


def test_an_unmarked_store_is_refused(redis_url: str) -> None:
    result = Cli(redis_url)("suggest", TOKEN)
    assert result.code == 3
    assert "store not initialised (or wiped)" in result.err
    assert Cli(redis_url)("suggest", TOKEN, "--enforce", "--yes").code == 3


async def test_the_python_api_refuses_an_unmarked_store(redis_url: str) -> None:
    admin = Admin.from_url(redis_url, secret=SECRET)
    try:
        with pytest.raises(StoreNotInitialised):
            await admin.suggest(TOKEN)
    finally:
        await admin.close()


async def test_a_token_changed_since_the_suggestion_is_not_overwritten(initialised: str) -> None:
    admin = Admin.from_url(initialised, secret=SECRET)
    try:
        await learning(admin)
        await through_validators(initialised, origins("app.example.com", 1))
        s = await admin.suggest(TOKEN)
        await admin.add_ips(TOKEN, ["192.0.2.1"])  # another admin, meanwhile
        with pytest.raises(InvalidEntry, match="changed since the suggestion"):
            await admin.apply_suggestion(TOKEN, s, enforce=True)
        stored = await admin.get(TOKEN)
        assert stored is not None and (stored.mode, stored.ips) == (Mode.REPORT, ["192.0.2.1"])
        with pytest.raises(InvalidEntry, match="limit must be from 1"):
            await admin.suggest(TOKEN, limit=6)
    finally:
        await admin.close()


def test_no_output_shows_the_token(learnt: str, cli: Cli) -> None:
    for args in (("suggest", TOKEN), ("suggest", TOKEN, "--json"), ("suggest", TOKEN, "--apply", "--yes")):
        result = cli(*args)
        assert result.code == 0, result.err
        assert "do_not_print" not in result.out + result.err


async def test_suggest_on_every_deployment(backend: Backend) -> None:
    """The stream shares the token's hash tag: on a cluster it is read from the token's slot."""
    admin = Admin.from_url(backend.url, secret=SECRET)
    try:
        await admin.init()
        await learning(admin)
        await through_validators(backend.url, [*origins("app.example.com", 2), *servers("203.0.113.7", 1)])
        s = await admin.suggest(TOKEN)
        assert (s.domains.entries, s.ips.entries, s.denials) == (["app.example.com"], ["203.0.113.7"], 3)
        change = await admin.apply_suggestion(TOKEN, s, enforce=True)
        assert change.restrictions is not None and change.restrictions.mode is Mode.ENFORCE
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("answer", "code", "mode"),
    [
        pytest.param("y\n", 0, Mode.ENFORCE, id="yes"),
        pytest.param("YES\n", 0, Mode.ENFORCE, id="YES"),
        pytest.param("n\n", 1, Mode.REPORT, id="no"),
        pytest.param("\n", 1, Mode.REPORT, id="just enter: no"),
        pytest.param("", 1, Mode.REPORT, id="end of input: no"),
    ],
)
def test_on_a_terminal_it_asks_first(learnt: str, store: Direct, answer: str, code: int, mode: Mode) -> None:
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            command("suggest", TOKEN, "--enforce"),
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(learnt),
        )
        os.close(secondary)
        secondary = -1
        os.write(primary, answer.encode() if answer else b"\x04")  # ^D: end of input on a terminal
        out, err = process.communicate(timeout=60)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert process.returncode == code, err
    assert b"switch the restrictions as shown and enforce? [y/N]" in err
    assert b"would still deny" in out
    stored = store.get(TOKEN)
    assert stored is not None and stored.mode is mode
    if code:
        assert b"not confirmed: nothing was changed" in err


# ------------------------------------------------------------------------------ a flood from the holder

ATTACKER = "192.0.2.66"
# Legitimate traffic: three browsers on the app's site, the app's server.
LEGITIMATE: list[Request] = [
    *[
        {"origin": "https://app.example.com", "client_ip": f"198.51.100.{n}"}
        for n in (11, 12, 13)
        for _ in range(3)
    ],
    *[{"client_ip": "203.0.113.7"}] * 4,
]
# Whoever holds the token (report-only mode lets every request through): 1,200 distinct Origins
# from one address, more than the capped stream keeps (1,000).
FLOOD: list[Request] = [
    {"origin": f"https://x{n}.attacker.example.net", "client_ip": ATTACKER} for n in range(1200)
]


async def _flood(url: str) -> None:
    validator = Validator.from_url(url, secret=SECRET)
    log = validator.denial_log
    assert log is not None
    try:
        for start in range(0, len(FLOOD), 150):  # several batches: the summary's evictions at work
            for request in FLOOD[start : start + 150]:
                assert (await validator.check(TOKEN, **request)).allowed
            await asyncio.wait_for(log.flush(), 10)
        assert log.dropped == 0
    finally:
        await validator.close()


@pytest.mark.promise("P-SUGGEST-FLOOD-RESISTANT")
def test_a_flood_of_distinct_origins_from_the_holder_does_not_steer_the_proposal(
    initialised: str, cli: Cli
) -> None:
    """Issue 23, hole 6: before the flood the proposal is the app's site and server; after 1,200
    distinct Origins from one address (the capped stream then holds only those) it still is, the
    flood's values are refused, and the output says the log looks flooded."""
    set_up_learning(initialised)
    drive(initialised, LEGITIMATE)
    before = cli("suggest", TOKEN, "--json").json()
    assert (before["domains"]["added"], before["ips"]["added"]) == (["app.example.com"], ["203.0.113.7"])
    assert before["floods"] == []

    asyncio.run(_flood(initialised))

    direct: Any = redis.Redis.from_url(initialised, decode_responses=True)
    try:
        # The attack did what the issue says to the capped stream: nothing legitimate is left in it.
        (stream,) = [k for k in direct.scan_iter("*-denials:{*}") if direct.type(k) == "stream"]
        seen = {fields["seen"] for _, fields in direct.xrange(stream)}
        assert direct.xlen(stream) >= 1000
        assert all(host.endswith(".attacker.example.net") for host in seen)
        # The summary: bounded, the token nowhere in clear.
        (summary,) = list(direct.scan_iter("*-denials:{*}:summary"))
        assert direct.hlen(summary) <= 256 + 5  # pairs, and a counter per client that has some
        assert direct.memory_usage(summary) < 64 * 1024
        for key in direct.scan_iter("*"):
            assert TOKEN not in key
        assert not any(TOKEN in part for item in direct.hgetall(summary).items() for part in item)
    finally:
        direct.close()

    after = cli("suggest", TOKEN, "--json").json()
    assert after["summary"] is True
    assert after["domains"]["added"] == ["app.example.com"]
    assert after["ips"]["added"] == ["203.0.113.7"]
    assert after["wildcards"] == []
    assert [(f["client"], f["values"]) for f in after["floods"]] == [(ATTACKER, 1200)]
    observed = {o["seen"]: o for o in after["observations"]}
    assert (observed["app.example.com"]["count"], observed["app.example.com"]["clients"]) == (9, 3)
    assert observed["203.0.113.7"]["count"] == 4
    flooded = [o for o in after["observations"] if o["seen"].endswith(".attacker.example.net")]
    assert flooded and all(o["status"] == "refused" and "a flood?" in o["why"] for o in flooded)

    table = cli("suggest", TOKEN)
    assert table.code == 0, table.err
    assert f"warning: the log looks flooded: client {ATTACKER} sent 1,200 distinct" in table.out
    assert "propose app.example.com" in table.out
    assert "domains  on  [app.example.com*]" in table.out
    assert "ips      on  [203.0.113.7*]" in table.out
