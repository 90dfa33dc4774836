"""The stateful model test (issue 12): random sequences of admin operations, store events, time
and requests against real redis-server processes, every decision held to the reference model.

The normal run uses the small profile of `tests.model.run` (25 sequences of at most 40 steps,
and no new step after 100 s); `scripts/soak --minutes N` runs the same machine for as long as
asked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.model import spec
from tests.model.base import ISSUED
from tests.model.harness import World, secret_in_environment
from tests.model.machine import Sequences, Stats
from tests.model.run import run_machine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sequences_keep_the_promises(world: World) -> None:
    stats = run_machine(world, profile="ci")
    assert stats.sequences > 0 and stats.steps > 0


@pytest.mark.timeout(120)
def test_an_entry_that_expires_never_matches_again(world: World) -> None:
    """One sequence written out (the random ones reach it seldom): an IP entry added `--until`
    1.5 s ahead (within the 2 s that rules read before an outage stay usable) is served, then
    lapses while Redis is down and the last known rules are served (it must not match), stays
    lapsed after recovery, and a lapsed entry frees its slot in the limit. Every decision is
    still judged by the model."""
    Sequences.world = world
    Sequences.stats = Stats()
    Sequences.deadline = math.inf
    server = spec.FRONT_BY_NAME["server"]
    token, other = ISSUED[0], ISSUED[1]
    with secret_in_environment():
        machine = Sequences()
        try:
            machine.begin(start="init")
            run = machine.run
            machine.step(machine._guarded(spec.Op("enable", token, "ip"), "api"))
            soon = math.ceil((machine.clock.wall() + 1.5) * 4) * 250
            machine.step(
                machine._guarded(spec.Op("add", token, "ip", ("203.0.113.7",), expires_at=soon), "cli")
            )
            assert run(machine._check(0, token, server, "203.0.113.7")) is True
            machine.step(machine._outage("kill, data saved"))
            machine.step(machine._pass(0.3))
            assert run(machine._check(0, token, server, "203.0.113.7")) is True  # T not reached yet
            machine.step(machine._pass(soon / 1000 - machine.clock.wall() + 0.05))
            # Past T, the store down: the last known rules, without the lapsed entry (a 403, not a 503).
            assert machine.seats[0].validator.check_cached(token, client_ip="203.0.113.7") is None
            assert run(machine._check(0, token, server, "203.0.113.7")) is False
            assert run(machine._request(0, "header", token, token, server, "203.0.113.7")) == 403
            assert machine.stats.events["denied: the entry that allowed it has expired"] >= 1
            machine.step(machine._outage("start"))
            machine.step(machine._settle())
            assert run(machine._check(1, token, server, "203.0.113.7")) is False
            # Adding it again without an expiry makes it permanent.
            machine.step(machine._guarded(spec.Op("add", token, "ip", ("203.0.113.7",)), "api"))
            machine.step(machine._pass(5.0))
            assert run(machine._check(0, token, server, "203.0.113.7")) is True

            # The limit: four permanent entries and one that lapses on the Redis server's clock.
            permanent = ("8.8.8.8", "1.1.1.0/24", "198.51.100.0/24", "2606:4700::1111")
            machine.step(machine._guarded(spec.Op("add", other, "ip", permanent), "api"))
            lapsing = math.ceil((time.time() + 1.5) * 4) * 250
            machine.step(
                machine._guarded(spec.Op("add", other, "ip", ("203.0.113.7",), expires_at=lapsing), "api")
            )
            extra = spec.Op("add", other, "ip", ("2a00:1450:4001::/48",))
            machine.step(machine._guarded(extra, "api"))
            assert machine.stats.events["admin limit"] == 1  # 5 of 5 while Redis holds it
            # The Redis server's clock cannot be moved: wait for it to pass the instant.
            time.sleep(max(0.0, lapsing / 1000 - time.time()) + 0.02)
            machine.step(machine._guarded(extra, "subprocess"))
            stored = machine.model.stored[other]
            assert stored is not None and len(stored.ips) == 5 and "203.0.113.7/32" not in stored.ips
            machine.step(machine._export("api"))  # the export is the store
            machine.step(machine._settle())
            assert not machine.stats.failures
        finally:
            machine.teardown()
