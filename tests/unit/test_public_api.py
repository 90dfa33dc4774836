"""Issue 13, "Public API": `check_cached` takes its arguments by keyword like `check`, `Settings`
and `Stats` are exported, the counters sit behind one read-only `Validator.stats`, and a check
on an unmarked store raises a public, documented error (no private class leaks to callers)."""

from __future__ import annotations

import uuid

import pytest

import validator as package
from validator import Admin, Reason, Restrictions, StoreUnavailable, StoreUnmarked, Validator

pytestmark = pytest.mark.timeout(30)

TOKEN = "tok_public_api"
LISTED_IP = "203.0.113.7"
LISTED_ORIGIN = "https://app.example.com"

# The same request through `check` and `check_cached` (cached hit): the same decision.
HITS = [
    pytest.param({"client_ip": LISTED_IP}, True, Reason.IP_LISTED, id="back end, IP listed"),
    pytest.param({"client_ip": "198.51.100.1"}, False, Reason.IP_NOT_LISTED, id="back end, IP not listed"),
    pytest.param({"origin": LISTED_ORIGIN}, True, Reason.DOMAIN_LISTED, id="front end, Origin listed"),
    pytest.param(
        {"referer": "https://evil.example/x"}, False, Reason.DOMAIN_NOT_LISTED, id="front end, Referer"
    ),
    pytest.param({"sec_fetch": True}, False, Reason.NO_DOMAIN, id="front end, Sec-Fetch only"),
]


async def _validator() -> Validator:
    url = f"memory://{uuid.uuid4().hex}"
    admin = Admin.from_url(url, secret="s")
    try:
        await admin.put(
            TOKEN,
            Restrictions(domain_enabled=True, ip_enabled=True, domains=["app.example.com"], ips=[LISTED_IP]),
        )
    finally:
        await admin.close()
    return Validator.from_url(url, secret="s")


async def test_check_cached_refuses_positional_request_fields() -> None:
    validator = await _validator()
    async with validator:
        await validator.check(TOKEN, client_ip=LISTED_IP)
        with pytest.raises(TypeError):
            # Before: the IP was silently read as an Origin.
            validator.check_cached(TOKEN, LISTED_IP)  # type: ignore[call-arg]


@pytest.mark.parametrize(("request_fields", "allowed", "reason"), HITS)
async def test_check_and_check_cached_decide_a_hit_alike(
    request_fields: dict[str, object], allowed: bool, reason: Reason
) -> None:
    validator = await _validator()
    async with validator:
        await validator.check(TOKEN, client_ip=LISTED_IP)  # cached from here on
        by_check = await validator.check(TOKEN, **request_fields)  # type: ignore[arg-type]
        by_cache = validator.check_cached(TOKEN, **request_fields)  # type: ignore[arg-type]
    assert by_cache is by_check
    assert (by_check.allowed, by_check.reason) == (allowed, reason)


def test_settings_stats_and_errors_are_exported() -> None:
    for name in ("Settings", "Stats", "StoreUnmarked"):
        assert name in package.__all__
        assert hasattr(package, name)


async def test_stats_is_one_read_only_snapshot() -> None:
    validator = await _validator()
    async with validator:
        before = validator.stats
        decision = await validator.check(TOKEN, client_ip=LISTED_IP)
        after = validator.stats
    assert (before.misses, after.misses) == (0, 1)
    assert after.decisions[decision] == before.decisions[decision] + 1
    with pytest.raises(AttributeError):
        after.misses = 0  # type: ignore[misc]
    assert not hasattr(validator, "misses")


async def test_unmarked_store_fails_closed_with_a_public_error() -> None:
    validator = await _validator()
    async with validator:
        await validator.store.client.delete(validator.store.marker_key)
        validator.shards.marker_changed()  # read the marker again, as after a reconnect
        with pytest.raises(StoreUnavailable) as raised:
            await validator.check("tok_never_cached", client_ip=LISTED_IP)
    assert type(raised.value) is StoreUnmarked
    assert type(raised.value).__module__ == "validator.errors"
    assert "no marker" in str(raised.value)


def test_store_unmarked_is_the_deprecated_name_of_store_not_initialised() -> None:
    # One state, one class: code that catches either name, or StoreUnavailable, still catches it.
    assert StoreUnmarked is package.StoreNotInitialised
    assert issubclass(package.StoreNotInitialised, StoreUnavailable)
    assert package.StoreNotInitialised("x").state == "missing"
