"""`Access-Denied-Ref` against a real redis-server: every reference a 403 carried leads the admin
to its denial-log entry (`validator-admin denials --ref`), from any validator process, through
merged floods, on one server, a Sentinel master and a Cluster; `check --replay REF` explains it
against the token's current rules without the token; and the references that cannot lead to an
entry say why."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.integration.test_cli_support import SECRET, Cli, environment
from validator import Admin, Validator
from validator.model import Decision
from validator.store.denial_refs import DROPPED, LOGGED, REFUSED, UNLOGGED

pytestmark = [pytest.mark.promise("P-DENIAL-REF")]

TOKEN = "tok_live_ref_do_not_print"
NEW_TOKEN = "tok_live_ref_not_yet_stored"
LISTED_IP = "203.0.113.7"
CLIENT_IP = "198.51.100.77"
OTHER_IP = "198.51.100.78"


async def restricted(validator: Validator) -> None:
    """TOKEN stored as IP-restricted to LISTED_IP, on an initialised store, seen by `validator`."""
    admin = Admin(validator.store)
    await admin.init()
    await admin.set_ips(TOKEN, [LISTED_IP])
    await admin.enable(TOKEN, "ip")
    await validator.sync()


@pytest.fixture
async def validator(redis_url: str) -> AsyncIterator[Validator]:
    async with Validator.from_url(redis_url, secret=SECRET, unknown_token="deny") as validator:
        await restricted(validator)
        yield validator


async def denied(
    validator: Validator, token: str = TOKEN, *, origin: str | None = None, client_ip: str | None = None
) -> tuple[Decision, str]:
    """A denied check and its reference, built from what the check returned as the middleware does."""
    screened = await validator.screen(token, origin=origin, client_ip=client_ip)
    assert isinstance(screened, tuple)
    decision, _ = screened
    assert not decision.allowed
    assert validator.denial_log is not None
    return decision, validator.denial_log.ref(screened).decode()


async def drained(validator: Validator) -> None:
    assert validator.denial_log is not None
    await asyncio.wait_for(validator.denial_log.flush(), 10)


# A validator in another process (another hash seed: its request tags are its own).
OTHER_PROCESS = """
import asyncio, sys
from validator import Validator

async def main() -> None:
    url, secret, token, ip = sys.argv[1:]
    async with Validator.from_url(url, secret=secret, unknown_token="deny") as validator:
        screened = await validator.screen(token, client_ip=ip)
        assert not screened[0].allowed
        print(validator.denial_log.ref(screened).decode())
        await asyncio.wait_for(validator.denial_log.flush(), 10)

asyncio.run(main())
"""


def denied_elsewhere(url: str, token: str, ip: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, url, SECRET, token, ip],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(None),
        check=True,
    )
    return done.stdout.strip()


async def test_denials_ref_finds_the_denial_of_any_validator_process(
    validator: Validator, redis_url: str
) -> None:
    _, here = await denied(validator, client_ip=CLIENT_IP)
    _, unknown = await denied(validator, NEW_TOKEN, origin="https://shop.example:8443")
    await drained(validator)
    there = await asyncio.to_thread(denied_elsewhere, redis_url, TOKEN, OTHER_IP)
    cli = Cli(redis_url)
    fingerprint = Admin(validator.store).fingerprint
    expected = {
        here: (fingerprint(TOKEN), "back_end", CLIENT_IP, "", "ip_not_listed"),
        there: (fingerprint(TOKEN), "back_end", OTHER_IP, "", "ip_not_listed"),
        unknown: (
            fingerprint(NEW_TOKEN),
            "front_end",
            "shop.example",
            "https://shop.example:8443",
            "unknown_token",
        ),
    }
    for ref, (token, source, seen, origin, reason) in expected.items():
        result = await asyncio.to_thread(cli, "--json", "denials", "--ref", ref)
        assert result.code == 0, result.err
        shown = result.json()
        assert (shown["kind"], shown["found"], shown["note"]) == ("logged", True, None)
        [entry] = shown["denials"]
        assert (entry["token"], entry["source"], entry["seen"], entry["origin"], entry["reason"]) == (
            token,
            source,
            seen,
            origin,
            reason,
        )
        assert (entry["mode"], entry["count"]) == ("enforce", 1)
        assert "tag" not in entry
        assert shown["unknown_token"] is (reason == "unknown_token")
    table = await asyncio.to_thread(cli, "denials", "--ref", here.upper())
    assert table.code == 0
    for shown_value in (fingerprint(TOKEN), CLIENT_IP, "ip_not_listed", "denied"):
        assert shown_value in table.out
    assert TOKEN not in table.out + table.err


async def test_every_reference_of_a_merged_flood_finds_its_own_entry(validator: Validator) -> None:
    # 600 denials of one token from two interleaved clients, queued before the writer runs: one
    # batch, merged into one entry per client (count, first..at), each reference still found.
    # Cached now: the rest are synchronous hits. From a third address: the same request a
    # millisecond before the flood would be a second entry its first reference matches as well
    # (the same token, tag and time: the same request, which a reference cannot tell apart).
    await denied(validator, client_ip="198.51.100.79")
    await drained(validator)
    refs = [(await denied(validator, client_ip=ip))[1] for ip in [CLIENT_IP, OTHER_IP] * 300]
    await drained(validator)
    admin = Admin(validator.store)
    entries = await admin.denials(TOKEN, count=10)
    assert sorted((e["seen"], e.get("count")) for e in entries[:2]) == [(CLIENT_IP, "300"), (OTHER_IP, "300")]
    for n, ref in enumerate(refs):
        _, found = await admin.find_denial(ref)
        assert [m.entry["seen"] for m in found.matches] == [[CLIENT_IP, OTHER_IP][n % 2]], n
        assert found.matches[0].entry["count"] == "300"


async def test_check_replay_ref_explains_a_denial_against_the_current_rules(
    validator: Validator, redis_url: str
) -> None:
    _, ref = await denied(validator, client_ip=CLIENT_IP)
    _, unknown = await denied(validator, NEW_TOKEN, client_ip=CLIENT_IP)
    await drained(validator)
    cli = Cli(redis_url)
    before = await asyncio.to_thread(cli, "--json", "check", "--replay", ref)
    assert before.code == 1, before.err
    assert (before.json()["reason"], before.json()["ip"]) == ("ip_not_listed", CLIENT_IP)
    admin = Admin(validator.store)
    await admin.add_ips(TOKEN, [CLIENT_IP])
    after = await asyncio.to_thread(cli, "check", "--replay", ref)
    assert after.code == 0, after.err
    assert "allowed" in after.out
    assert "replaying the denial of" in after.err
    # An unknown token's denial: its log entry names it by fingerprint only.
    still_unknown = await asyncio.to_thread(cli, "--json", "check", "--replay", unknown, "--deny-unknown")
    assert (still_unknown.code, still_unknown.json()["reason"]) == (1, "unknown_token")
    await admin.set_ips(NEW_TOKEN, [CLIENT_IP])
    await admin.enable(NEW_TOKEN, "ip")
    stored_since = await asyncio.to_thread(cli, "--json", "check", "--replay", unknown, "--deny-unknown")
    assert (stored_since.code, stored_since.json()["reason"]) == (0, "ip_listed")
    assert "by fingerprint only" in stored_since.err
    # With the token as well, the reference must be one of its denials.
    other = await asyncio.to_thread(cli, "check", "-", "--replay", unknown, stdin=TOKEN + "\n")
    assert other.code == 2
    assert "another token" in other.err


async def test_references_that_lead_to_no_entry_say_why(validator: Validator, redis_url: str) -> None:
    _, ref = await denied(validator, client_ip=CLIENT_IP)
    await drained(validator)
    refs = validator.store.denial_refs
    raw = aioredis.Redis.from_url(redis_url)
    await raw.delete(validator.store.denials_key(validator.store.token_hash(TOKEN)))  # as if expired
    await raw.aclose()
    refused = refs.refused(1_796_112_000_000, 1).decode()
    token_hash = validator.store.token_hash(TOKEN)
    dropped = refs.encode(DROPPED, False, 1_796_112_000_000, token_hash, 0).decode()
    unlogged = refs.encode(UNLOGGED, False, 1_796_112_000_000, "", 0).decode()
    cli = Cli(redis_url)
    cases = [
        (ref, "logged", "expired"),
        (refused, "refused", "refused before any token was checked: ambiguous request"),
        (dropped, "dropped", "the validator's denial queue was full"),
        (unlogged, "unlogged", "keeps no denial log"),
    ]
    for text, kind, note in cases:
        result = await asyncio.to_thread(cli, "--json", "denials", "--ref", text)
        assert result.code == 0, result.err
        assert (result.json()["kind"], result.json()["found"]) == (kind, False)
        assert note in result.json()["note"]
        replay = await asyncio.to_thread(cli, "check", "--replay", text)
        assert (replay.code, "no denial to replay" in replay.err) == (2, True)
    assert refs.decode(refused) is not None and refs.decode(refused).kind == REFUSED  # type: ignore[union-attr]
    # Not a reference (a token pasted by mistake, another secret's): refused, never echoed.
    for text in (TOKEN, "0" * 32):
        result = await asyncio.to_thread(cli, "denials", "--ref", text)
        assert result.code == 2
        assert "not a denial reference issued with this secret" in result.err
        assert text not in result.err + result.out
    wrong_secret = await asyncio.to_thread(cli, "denials", "--ref", ref, VALIDATOR_SECRET="another")
    assert wrong_secret.code == 2


async def test_references_are_found_on_every_deployment(store_url: str) -> None:
    async with Validator.from_url(store_url, secret=SECRET, unknown_token="deny") as validator:
        await restricted(validator)
        _, stored = await denied(validator, client_ip=CLIENT_IP)
        _, unknown = await denied(validator, NEW_TOKEN, client_ip=CLIENT_IP)
        await drained(validator)
        admin = Admin(validator.store)
        for ref, token_hash in ((stored, validator.store.token_hash(TOKEN)), (unknown, None)):
            decoded, found = await admin.find_denial(ref)
            assert decoded.kind == LOGGED
            assert [(m.token_hash, m.entry["seen"]) for m in found.matches] == [(token_hash, CLIENT_IP)]
