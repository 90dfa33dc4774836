"""`validator-admin mode`, `denials` and `check --replay`, as a user runs them, on a real redis-server."""

from __future__ import annotations

import asyncio

from tests.integration.test_cli_support import SECRET, Cli, Direct
from validator import Mode, Validator

TOKEN = "tok_live_report_do_not_print"


def deny_through_a_validator(redis_url: str, *requests: dict[str, str]) -> list[bool]:
    """Drive requests through a real Validator (as a service would) and wait for the denial log."""

    async def run() -> list[bool]:
        async with Validator.from_url(redis_url, secret=SECRET) as validator:
            allowed = [(await validator.check(TOKEN, **request)).allowed for request in requests]  # type: ignore[arg-type]
            assert validator.denial_log is not None
            await asyncio.wait_for(validator.denial_log.flush(), 10)
            return allowed

    return asyncio.run(run())


def test_mode_switches_and_show_says_so(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, ips=["203.0.113.7"], on=["ip"])
    result = cli("mode", TOKEN, "report")
    assert result.code == 0, result.err
    assert "report-only" in result.out
    stored = store.get(TOKEN)
    assert stored is not None and stored.mode is Mode.REPORT
    assert cli("show", TOKEN, "--json").json()["mode"] == "report"
    assert "REPORT-ONLY" in cli("show", TOKEN).out
    again = cli("mode", TOKEN, "report")
    assert "unchanged" in again.out
    assert cli("mode", TOKEN, "enforce", "--json").json()["restrictions"]["mode"] == "enforce"


def test_mode_refuses_anything_else(cli: Cli) -> None:
    assert cli("mode", TOKEN, "audit").code == 2


def test_report_only_walkthrough(cli: Cli, store: Direct, redis_url: str) -> None:
    store.given(TOKEN, ips=["203.0.113.7"], on=["ip"])
    assert cli("mode", TOKEN, "report").code == 0
    # Report-only: the server at 198.51.100.9 is let through, and the would-be denial recorded.
    assert deny_through_a_validator(redis_url, {"client_ip": "198.51.100.9"}) == [True]
    denials = cli("denials", TOKEN, "--json").json()["denials"]
    assert [(d["mode"], d["seen"], d["reason"]) for d in denials] == [
        ("report", "198.51.100.9", "ip_not_listed")
    ]
    assert "would deny" in cli("denials", TOKEN).out
    # The replay says why it is (still) denied ...
    replay = cli("check", TOKEN, "--replay")
    assert replay.code == 1
    assert "198.51.100.9" in replay.err
    # ... the admin fixes the list, the replay now passes, and enforcing is safe.
    assert cli("ips", "add", TOKEN, "198.51.100.9").code == 0
    assert cli("check", TOKEN, "--replay").code == 0
    assert cli("mode", TOKEN, "enforce").code == 0
    assert deny_through_a_validator(redis_url, {"client_ip": "198.51.100.9"}, {"client_ip": "192.0.2.1"}) == [
        True,
        False,
    ]
    assert cli("denials", TOKEN, "--json").json()["denials"][0]["mode"] == "enforce"


def test_denials_since(cli: Cli, store: Direct, redis_url: str) -> None:
    store.given(TOKEN, ips=["203.0.113.7"], on=["ip"])
    deny_through_a_validator(redis_url, {"client_ip": "198.51.100.9"})
    assert len(cli("denials", TOKEN, "--since", "10m", "--json").json()["denials"]) == 1
    assert cli("denials", TOKEN, "--since", "2999-01-01T00:00:00Z", "--json").json()["denials"] == []
    assert cli("denials", TOKEN, "--since", "yesterday").code == 2


def test_replay_without_denials_is_a_usage_error(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, ips=["203.0.113.7"], on=["ip"])
    result = cli("check", TOKEN, "--replay")
    assert result.code == 2
    assert "no denial" in result.err


def test_no_output_shows_the_token(cli: Cli, store: Direct, redis_url: str) -> None:
    store.given(TOKEN, ips=["203.0.113.7"], on=["ip"])
    deny_through_a_validator(redis_url, {"client_ip": "198.51.100.9"})
    for args in (("denials", TOKEN), ("denials", TOKEN, "--json"), ("mode", TOKEN, "report")):
        result = cli(*args)
        assert "do_not_print" not in result.out + result.err
