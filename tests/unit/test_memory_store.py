"""The in-process `memory://` store: shared by name, initialised by construction, invalidated in-process."""

from __future__ import annotations

import uuid

from validator import Admin, Reason, Validator


def fresh_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


async def test_admin_writes_reach_validators_of_the_same_store_at_once() -> None:
    url = fresh_url()
    admin = Admin.from_url(url)
    await admin.set_ips("tok", ["203.0.113.7"])
    await admin.enable("tok", "ip")
    async with Validator.from_url(url) as one, Validator.from_url(url) as two:
        for validator in (one, two):
            assert (await validator.check("tok", client_ip="203.0.113.7")).allowed
        await admin.set_ips("tok", ["198.51.100.1"])
        for validator in (one, two):
            assert validator.check_cached("tok", client_ip="203.0.113.7") is None
            assert not (await validator.check("tok", client_ip="203.0.113.7")).allowed


async def test_a_new_memory_store_is_sound_without_init() -> None:
    async with Validator.from_url(fresh_url()) as validator:
        decision = await validator.check("never-stored", client_ip="203.0.113.7")
        assert (decision.allowed, decision.reason) == (True, Reason.UNKNOWN_TOKEN)


async def test_stores_with_other_names_share_nothing() -> None:
    admin = Admin.from_url(fresh_url())
    await admin.set_ips("tok", ["203.0.113.7"])
    await admin.enable("tok", "ip")
    async with Validator.from_url(fresh_url()) as elsewhere:
        assert (await elsewhere.check("tok", client_ip="198.51.100.1")).reason is Reason.UNKNOWN_TOKEN


async def test_closing_a_validator_stops_its_notifications() -> None:
    url = fresh_url()
    validator = Validator.from_url(url)
    await validator.connect()
    listeners = validator.store.local_listeners
    assert validator.cache.invalidate in listeners
    await validator.close()
    assert validator.cache.invalidate not in listeners
