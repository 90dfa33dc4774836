"""The stateful model test (issue 12): random sequences of admin operations, store events, time
and requests against real redis-server processes, every decision held to the reference model.

The normal run uses the small profile of `tests.model.run` (25 sequences of at most 40 steps,
and no new step after 100 s); `scripts/soak --minutes N` runs the same machine for as long as
asked, `scripts/soak --cluster --minutes N` the Cluster one (`tests.model.cluster`).

The random runs here hold every decision to the model (never a wrong allow) and count the
availability and shutdown figures; the written-out sequences below assert those (issue 22
item 6), so that a defect of one promise fails the test named after it. The soak asserts all.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.model import spec
from tests.model.base import ISSUED
from tests.model.cluster import CLUSTER_TOKENS, ClusterSequences, ClusterWorld
from tests.model.harness import World, secret_in_environment
from tests.model.machine import Sequences, Stats
from tests.model.run import run_machine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


@pytest.fixture
def lenient_lifecycle() -> Iterator[None]:
    """The random runs count availability and shutdown, the written-out sequences assert them."""
    before = [(m, m.enforce_availability, m.enforce_shutdown) for m in (Sequences, ClusterSequences)]
    for machine, _, _ in before:
        machine.enforce_availability = machine.enforce_shutdown = False
    yield
    for machine, availability, shutdown in before:
        machine.enforce_availability, machine.enforce_shutdown = availability, shutdown


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.promise("P-NEVER-WRONG-ALLOW")
@pytest.mark.usefixtures("lenient_lifecycle")
def test_sequences_keep_the_promises(world: World) -> None:
    stats = run_machine(world, profile="ci")
    assert stats.sequences > 0 and stats.steps > 0
    assert stats.wrong_allows == 0


def _machine(world: World) -> Sequences:
    Sequences.world = world
    Sequences.stats = Stats()
    Sequences.deadline = math.inf
    machine = Sequences()
    machine.begin(start="init")
    return machine


@pytest.mark.timeout(180)
@pytest.mark.promise("P-STALE-IF-ERROR")
@pytest.mark.parametrize("kind", ["kill, data saved", "kill, data lost", "sigstop"])
def test_cached_decisions_are_served_through_an_outage(world: World, kind: str) -> None:
    """Decisions read from a sound store (an allowed IP, a denied one, a browser request, an
    unknown token on both policies) are served at once after the store fails, 0.1 s later, and
    past `ttl` within `max_stale`, as they were read; past `ttl + max_stale` none is."""
    server = spec.FRONT_BY_NAME["server"]
    token = ISSUED[0]
    with secret_in_environment():
        machine = _machine(world)
        try:
            machine.step(machine._guarded(spec.Op("enable", token, "ip"), "api"))
            machine.step(machine._guarded(spec.Op("add", token, "ip", ("203.0.113.7",)), "api"))
            machine.step(machine._settle())
            probes = [
                (0, token, "server", "203.0.113.7"),
                (1, token, "server", "198.51.100.20"),
                (1, token, "app", "203.0.113.7"),
                (0, "tk_Never_000", "server", "203.0.113.7"),
                (1, "tk_Never_000", "server", "203.0.113.7"),
            ]
            machine.step(machine._cached_through_outage(kind, probes))
            assert machine.stats.outage_checks >= 2 * len(probes)
            assert machine.stats.unavailable_cached == 0
            assert machine.seats[0].validator.check_cached(token, client_ip="203.0.113.7") is None
            assert (
                machine.run(machine._check(0, token, server, "203.0.113.7")) is None
            )  # 503: past the window
            machine.step(machine._outage("start" if kind.startswith("kill") else "sigcont"))
            if kind == "kill, data lost":
                machine.step(machine._init("api", False))  # an empty store: the operator's init
            machine.step(machine._settle())
        finally:
            machine.teardown()


@pytest.mark.timeout(120)
@pytest.mark.promise("P-CLOSE-PROMPT")
@pytest.mark.parametrize(
    ("store", "during"),
    [
        *[("up", d) for d in ("idle", "mid-read", "connecting")],
        ("up", "link-cut"),
        *[(s, d) for s in ("dead", "hanging") for d in ("idle", "mid-read", "connecting")],
    ],
)
def test_close_is_prompt_in_every_state(world: World, store: str, during: str) -> None:
    """`close()` ends within 1 s (the test's bound: `CLOSE_BOUND`) with the store up, dead
    (SIGKILL, the validator backing off) or hanging (SIGSTOP), the validator idle, mid-read,
    connecting or just after its invalidation link was cut, and leaves no task of its own
    running; a fresh one follows and decides as the model once the store is back."""
    with secret_in_environment():
        machine = _machine(world)
        try:
            if store != "up":
                machine.step(machine._outage("kill, data saved" if store == "dead" else "sigstop"))
                machine.step(machine._pass(0.5))  # backing off by now
            for _ in range(2):
                for seat in (0, 1):
                    machine.step(machine._close_in_state(seat, during))
            assert machine.stats.closes >= 4
            print(f"max close ({store}, {during}): {machine.stats.close_max:.2f} s")
            if store != "up":
                machine.step(machine._outage("start" if store == "dead" else "sigcont"))
            machine.step(machine._settle())
        finally:
            machine.teardown()


# Issue 22, left open: on a Cluster, a validator closed while a read or connect() is under way
# sometimes leaves a RedisCluster client (created with the validator's store) whose connections
# reopen after close() and are never closed: an unclosed-client warning when it is collected,
# in whichever test the collection happens. Every task ends within the bound (asserted); only
# that warning is ignored here, until its cause is found.
CLUSTER_UNCLOSED_CLIENT = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def cluster_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterWorld]:
    world = ClusterWorld(tmp_path_factory.mktemp("cluster-model"))
    yield world
    world.close()
    # The clients of CLUSTER_UNCLOSED_CLIENT still uncollected: collected here, under the same
    # ignore, rather than in whichever later test (or pytest's own exit) collects them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@CLUSTER_UNCLOSED_CLIENT
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.promise("P-NEVER-WRONG-ALLOW")
@pytest.mark.promise("P-STALE-IF-ERROR")
@pytest.mark.promise("P-CLOSE-PROMPT")
def test_cluster_faults_written_out(cluster_world: ClusterWorld) -> None:
    """Each Cluster fault once, decisions primed before it: a primary killed (a validator closed
    while it fails over), a manual failover, a slot migrated, a primary flushed. Cached decisions
    outside the affected shard are all served, those of the killed primary's tokens too
    (stale-if-error); never a wrong allow; every validator decides as the model once it is ok."""
    ClusterSequences.world = cluster_world  # type: ignore[assignment]
    ClusterSequences.stats = Stats()
    ClusterSequences.deadline = math.inf
    with secret_in_environment():
        machine = ClusterSequences()
        try:
            machine.begin()
            for token in CLUSTER_TOKENS[:6]:
                machine.step(machine._admin(spec.Op("enable", token, "ip")))
                machine.step(machine._admin(spec.Op("add", token, "ip", ("203.0.113.7",))))
            machine.step(machine._settle())
            for kind in ("kill primary", "manual failover", "migrate slot", "flush primary"):
                machine.step(machine._fault(kind, 1, 0 if kind == "kill primary" else None))
                if machine.dead is not None:
                    machine.step(machine._restart_node())
                if machine.model.lost is not None:
                    machine.step(machine._init())
                machine.step(machine._settle())
            stats = machine.stats
            assert stats.outside_checks > 0 and stats.unavailable_outside == 0
            assert stats.outage_checks > 0 and stats.unavailable_cached == 0
            assert stats.wrong_allows == 0 and stats.closes >= 1
            assert {
                f"fault: {k}" for k in ("kill primary", "manual failover", "migrate slot", "flush primary")
            } <= set(stats.events)
        finally:
            machine.teardown()


@CLUSTER_UNCLOSED_CLIENT
@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.promise("P-CLOSE-PROMPT")
@pytest.mark.parametrize(
    ("cluster", "during"),
    [
        ("ok", "idle"),
        ("ok", "mid-read"),
        ("ok", "connecting"),
        ("a primary dead", "idle"),
        ("a primary dead", "mid-read"),
        ("a primary dead", "connecting"),
    ],
)
def test_cluster_close_is_prompt(cluster_world: ClusterWorld, cluster: str, during: str) -> None:
    """On a Cluster, ok or with a primary just killed (failing over): `close()` ends within the
    bound and leaves no task of its own; a fresh validator follows."""
    cluster_world.ensure_up()
    ClusterSequences.world = cluster_world  # type: ignore[assignment]
    ClusterSequences.stats = Stats()
    ClusterSequences.deadline = math.inf
    with secret_in_environment():
        machine = ClusterSequences()
        try:
            machine.begin()
            if cluster != "ok":
                victim = cluster_world.cluster.primaries()[0]
                victim.kill()
                machine.dead = victim
            for _ in range(2):
                for seat in (0, 1):
                    machine.step(machine._close_in_state(seat, during))
            assert machine.stats.closes >= 4
            print(f"max close (cluster {cluster}, {during}): {machine.stats.close_max:.2f} s")
        finally:
            machine.teardown()
            cluster_world.ensure_up()


@CLUSTER_UNCLOSED_CLIENT
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.promise("P-NEVER-WRONG-ALLOW")
@pytest.mark.usefixtures("lenient_lifecycle")
def test_cluster_sequences_keep_the_promises(cluster_world: ClusterWorld) -> None:
    """The Cluster machine's short profile: a few random sequences, at most 45 s of them."""
    cluster_world.ensure_up()
    stats = run_machine(cluster_world, profile="cluster-ci", machine=ClusterSequences)
    assert stats.sequences > 0 and stats.steps > 0
    assert stats.wrong_allows == 0 and stats.unavailable_outside == 0


@pytest.mark.timeout(120)
@pytest.mark.promise("P-NEVER-WRONG-ALLOW")
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
