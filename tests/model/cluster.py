"""The stateful test's Cluster profile (issue 22 item 6): three primaries with a replica each,
two validators, admin changes through the API, requests, and the faults of a Cluster: a primary
killed (its replica promoted by the cluster), a manual failover (CLUSTER FAILOVER on a replica),
a slot migrated to another primary, one primary flushed.

Invariants, on top of those of `tests.model.lifecycle` (AVAILABILITY, SHUTDOWN):
- SAFETY: never a wrong allow (the model's intent, or an older state within the stale window);
- OUTSIDE: a decision cached before a fault, of a token outside the shard the fault hits, is
  served during it (the count of those that are not must stay 0);
- LIVENESS: once the cluster is ok, marked and `sync()` returns, and no older state is within its
  stale window any more, every validator decides exactly as the model within a few breaker periods.

Run by `scripts/soak --cluster` and, in a short profile, by tests/model/test_sequences.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from tests.model import spec
from tests.model.admin_rules import _record
from tests.model.harness import SECRET, STALE_WINDOW, TIMING, Clock, LogCapture, follow_wall_clock
from tests.model.lifecycle import WINDOW, WINDOW_MARGIN, Lifecycle, Primed
from tests.model.state import ModelStore, Seen
from tests.redis_cluster import LocalCluster, redis_cli
from tests.redis_servers import RedisProcess
from validator import Admin
from validator.errors import StoreUnavailable
from validator.store.layout import slot_of

T = TypeVar("T")

# More tokens than the single profile's, so that each primary holds some.
CLUSTER_TOKENS = [
    f"tk_Cl{index}_{suffix}" for index, suffix in enumerate(["7a", "c3", "e9", "41", "b8", "05", "d2", "6f"])
]
UNKNOWN = "tk_Never_000"
PROBE_FRONT = "server"
PROBE_IP = "203.0.113.7"
IPS = ["203.0.113.7", "198.51.100.0/24", "2606:4700::1111", "8.8.8.8"]
NODE_TIMEOUT_MS = 1000
FAULT_TIMEOUT = 30.0
SETTLE_TIMEOUT = 20.0
LIVENESS_WINDOW = 6.0  # how long a check may still fail closed once the cluster is ok and synced


class ClusterWorld:
    """What outlives one sequence: the cluster (nodes restarted on their ports)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.cluster = LocalCluster(3, node_timeout_ms=NODE_TIMEOUT_MS)
        self.cluster.start()
        self.frozen = False

    @property
    def url(self) -> str:
        return self.cluster.url

    def dead(self) -> list[RedisProcess]:
        return [node for node in self.cluster.nodes if not node.running]

    def ensure_up(self) -> None:
        for node in self.dead():
            node.start()
        self.cluster.wait_ok(FAULT_TIMEOUT)

    def close(self) -> None:
        self.cluster.cleanup()


class ClusterSequences(Lifecycle):
    """Admin changes, requests and Cluster faults against `LocalCluster`, judged by the model."""

    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)
        self.active = time.monotonic() < self.deadline or bool(self.stats.failures)
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        follow_wall_clock(self.clock)
        self.virtual_time = True
        self.logs = LogCapture()
        self.logs.install()
        self.seats = []
        self.model = ModelStore(STALE_WINDOW, [Seen(unknown_allowed=True), Seen(unknown_allowed=False)])
        self.diverged = set()
        self.diverged_store = False
        self.exports = []
        self.runs = {}
        self.started = False
        self.trace = []
        self.quiet = False
        self.cluster_world.ensure_up()
        # Base's helpers close `raw`: a client that never connects.
        self.raw = aioredis.Redis(host="127.0.0.1", port=1)
        self.admin = Admin.from_url(self.world.url, secret=SECRET)
        self.dead: RedisProcess | None = None  # a killed node not restarted yet
        if self.active and not self.stats.failures:
            self.stats.sequences += 1

    @property
    def cluster_world(self) -> ClusterWorld:
        world: Any = self.world  # set by `tests.model.run` to a ClusterWorld
        assert isinstance(world, ClusterWorld)
        return world

    @property
    def up(self) -> bool:
        return True

    @property
    def serving(self) -> bool:
        return self.dead is None

    def _store_state(self) -> str:
        return (
            "a primary dead"
            if self.dead is not None
            else ("a primary flushed" if self.model.lost is not None else "cluster ok")
        )

    def memory_bounded(self) -> None:  # not an invariant here: one server's DBSIZE
        return None

    async def _blocking(self, work: Callable[..., T], *args: Any) -> T:
        """Cluster plumbing (redis-cli, waits) off the loop, so the validators' pings go on."""
        return await asyncio.to_thread(work, *args)

    # ---------------------------------------------------------------------------------- lifecycle

    async def _setup_cluster(self) -> None:
        await self._blocking(self.cluster_world.cluster.flushall)
        for name, unknown in (("allow-validator", "allow"), ("deny-validator", "deny")):
            self.seats.append(await self._new_seat(name, unknown))
        await self.admin.init()
        self.model.marked = True

    @initialize()
    def begin(self) -> None:
        self.started = True
        self.trace.append("begin()")
        self.run(self._setup_cluster())

    # ---------------------------------------------------------------------------------- admin

    @precondition(lambda self: self.model.lost is None)
    @rule(
        token=st.sampled_from(CLUSTER_TOKENS),
        kind=st.sampled_from(
            ["add", "add", "remove", "set", "clear", "enable", "enable", "disable", "delete"]
        ),
        restriction=st.sampled_from(["ip", "ip", "domain"]),
        entries=st.lists(st.sampled_from(IPS), min_size=1, max_size=2, unique=True),
    )
    def admin_change(self, token: str, kind: str, restriction: str, entries: list[str]) -> None:
        if restriction == "domain":
            entries = [
                {"203.0.113.7": "app.example.com", "8.8.8.8": "*.example.org"}.get(e, "x.example.org")
                for e in entries
            ]
        listed = () if kind in ("clear", "enable", "disable", "delete") else tuple(entries)
        op = spec.Op(kind, token, restriction, listed)  # type: ignore[arg-type]
        self.step(self._admin(op))

    async def _call(self, op: spec.Op) -> Any:
        a = self.admin
        if op.kind in ("add", "remove", "set"):
            method = getattr(a, f"{op.kind}_{'domains' if op.restriction == 'domain' else 'ips'}")
            return await method(op.token, list(op.entries))
        if op.kind == "clear":
            return await getattr(a, f"clear_{'domains' if op.restriction == 'domain' else 'ips'}")(op.token)
        if op.kind in ("enable", "disable"):
            return await getattr(a, op.kind)(op.token, op.restriction)
        return await a.delete(op.token)

    async def _admin(self, op: spec.Op) -> None:
        before = [self._link(seat) for seat in self.seats]
        current = self.model.stored.get(op.token)
        began_ms = time.time() * 1000
        outcome = "unavailable"
        for _ in range(6):  # a write in a failover window: retried, as an operator would
            try:
                result = await self._call(op)
            except StoreUnavailable:
                await asyncio.sleep(0.5)
                continue
            except Exception as error:
                self.fail("ADMIN", f"{op.describe()} raised {error!r}")
            outcome = "ok" if isinstance(result, bool) or getattr(result, "changed", True) else "noop"
            break
        plan = spec.plans(op, current, up=True, marked=True, redis_between=(began_ms, time.time() * 1000))
        delivered = await self._sync_all(before)
        self.count(f"admin {outcome}")
        if outcome == "unavailable":
            # Whether it landed is unknown: what the store holds now is the intent.
            stored = await self.admin.get(op.token)
            self.model.write(op.token, None if stored is None else _record(stored), delivered, self.now())
            return
        unchanged = "ok" in plan.outcomes and plan.after_for(frozenset({"ok"})) == current
        if outcome == "noop" and unchanged:
            return  # an add of what is there already: nothing changed, reported as such
        if outcome not in plan.outcomes and not (outcome == "ok" and "noop" in plan.outcomes):
            self.fail("ADMIN", f"{op.describe()}: {outcome}, SPEC.md says {sorted(plan.outcomes)}")
        if outcome == "ok" and "ok" in plan.outcomes:
            self.model.write(op.token, plan.after_for(frozenset({"ok"})), delivered, self.now())

    # ---------------------------------------------------------------------------------- requests

    @rule(
        seat=st.integers(0, 1),
        token=st.sampled_from([*CLUSTER_TOKENS, UNKNOWN]),
        front=st.sampled_from(["server", "app", "deep-org", "evil"]),
        client_ip=st.sampled_from(["203.0.113.7", "198.51.100.20", "2606:4700::1111", "33.1.2.3"]),
    )
    def check(self, seat: int, token: str, front: str, client_ip: str) -> None:
        self.step(self._check_rule(seat, token, front, client_ip))

    async def _check_rule(self, seat: int, token: str, front: str, client_ip: str) -> None:
        await self._check(seat, token, spec.FRONT_BY_NAME[front], client_ip)

    @rule(period=st.sampled_from(["breaker_reset", "ttl", "stale"]))
    def time_passes(self, period: str) -> None:
        seconds = WINDOW if period == "stale" else TIMING[period]
        self.step(self._pass(seconds + 0.05))

    @precondition(lambda self: self.dead is not None)
    @rule()
    def restart_node(self) -> None:
        """The killed node comes back (as a replica of its promoted one)."""
        self.step(self._restart_node())

    async def _restart_node(self) -> None:
        assert self.dead is not None
        node, self.dead = self.dead, None
        await self._blocking(node.start)
        await self._blocking(self.cluster_world.cluster.wait_ok, FAULT_TIMEOUT)
        self.count("node restarted")

    @precondition(lambda self: self.model.lost is not None)
    @rule()
    def init(self) -> None:
        """After a primary was flushed: `init` marks it again (its tokens now have no record)."""
        self.step(self._init())

    async def _init(self) -> None:
        for attempt in range(6):
            try:
                await self.admin.init()
                break
            except StoreUnavailable:
                # Seen once after a failover: "Connection closed by server" on the first try.
                self.count("init retried")
                if attempt == 5:
                    raise
                await asyncio.sleep(0.3)
        self.model.mark(self.now())
        self.count("init after a flush")

    # ---------------------------------------------------------------------------------- liveness

    @precondition(lambda self: self.dead is None and self.model.lost is None)
    @rule()
    def settle(self) -> None:
        """LIVENESS: the cluster ok and marked, `sync()` back, every validator decides as the model."""
        self.step(self._settle())

    async def _settle(self) -> None:
        if not await self._all_synced(SETTLE_TIMEOUT):
            self.fail(
                "LIVENESS",
                f"no working invalidation link / sync() within {SETTLE_TIMEOUT} s of an ok cluster",
            )
        await self._pass(TIMING["breaker_reset"] + 0.01)
        # An older state a validator may still serve (stale-if-error, when a read fails: a read
        # timing out on a loaded machine) lets it answer other than the model until its window
        # ends: e.g. the rules of a token read before its primary was flushed, for `ttl +
        # max_stale` after that read, though `init` and `sync()` followed (issue 22: the one
        # LIVENESS failure, an allow by the pre-flush entry). LIVENESS holds once none is left.
        latest = max(
            (until for seen in self.model.seats for states in seen.older.values() for _, until in states),
            default=0.0,
        )
        if latest >= self.now():
            await self._pass(latest - self.now() + 0.01)
        for index, seat in enumerate(self.seats):
            for token in [*CLUSTER_TOKENS, UNKNOWN]:
                for front_name, client_ip in (
                    ("server", "203.0.113.7"),
                    ("app", None),
                    ("server", "33.1.2.3"),
                ):
                    front = spec.FRONT_BY_NAME[front_name]
                    started = time.monotonic()
                    while True:
                        decided = await self._check(index, token, front, client_ip)
                        if decided is not None:
                            break
                        if time.monotonic() - started > LIVENESS_WINDOW:
                            self.fail(
                                "LIVENESS",
                                f"{seat.name} still fails closed for {token!r} {LIVENESS_WINDOW} s after "
                                "the cluster was ok and sync() returned",
                            )
                        await asyncio.sleep(TIMING["breaker_reset"])
                        await self._pass(0.01)
                    intended = spec.allows(
                        self.model.intent(token),
                        front,
                        client_ip,
                        unknown_allowed=seat.unknown == "allow",
                        now_ms=self.wall_ms(),
                    )
                    if decided != intended:
                        self.fail(
                            "LIVENESS",
                            f"{seat.name} {'allows' if decided else 'denies'} {token!r} front={front_name} "
                            f"client_ip={client_ip!r} on an ok, synced cluster; the model says {intended} "
                            f"({self.model.explain(index, token, self.now())})",
                        )
        self.count("settled (liveness held)")

    # ---------------------------------------------------------------------------------- faults

    def _owners(self) -> dict[str, int]:
        """Each token's primary (port), as the cluster says now."""
        cluster = self.cluster_world.cluster
        return {
            token: cluster.owner(slot_of(self.admin.store.token_hash(token))).port
            for token in [*CLUSTER_TOKENS, UNKNOWN]
        }

    @precondition(lambda self: self.dead is None and self.model.lost is None)
    @rule(
        kind=st.sampled_from(
            ["kill primary", "kill primary", "manual failover", "migrate slot", "flush primary"]
        ),
        which=st.integers(0, 7),
        close_seat=st.sampled_from([None, None, None, 0, 1]),
    )
    def fault(self, kind: str, which: int, close_seat: int | None) -> None:
        """A Cluster fault, decisions primed before it and checked during it: those of tokens
        outside the affected shard must all be served; those inside, while a node is down, too
        (stale-if-error). Drawn: a validator closed in the middle of it."""
        self.step(self._fault(kind, which, close_seat))

    async def _fault(self, kind: str, which: int, close_seat: int | None) -> None:
        cluster = self.cluster_world.cluster
        if not await self._all_synced(SETTLE_TIMEOUT):
            self.count("fault: not synced, skipped")
            return
        await self._blocking(cluster.wait_replicated)
        owners = await self._blocking(self._owners)
        token = CLUSTER_TOKENS[which % len(CLUSTER_TOKENS)]
        victim = cluster.node(owners[token])
        probes = [(seat, t, PROBE_FRONT, PROBE_IP) for seat in (0, 1) for t in [*CLUSTER_TOKENS, UNKNOWN]]
        primed = await self._prime(probes)
        if kind == "migrate slot":
            slot = slot_of(self.admin.store.token_hash(token))
            affected = {t for t in owners if slot_of(self.admin.store.token_hash(t)) == slot}
        else:
            affected = {t for t, port in owners.items() if port == victim.port}
        inside = [p for p in primed if p.token in affected]
        outside = [p for p in primed if p.token not in affected]
        self.count(f"fault: {kind}")

        async def watch(when: str) -> None:
            await self._outside_served(outside, f"{when} ({kind})")
            if kind in ("kill primary",):
                await self._still_served(inside, f"{when} ({kind})", shard_note=" (its primary down)")

        done: Callable[[], bool]
        if kind == "kill primary":
            await self._blocking(victim.kill)
            self.dead = victim
            done = lambda: cluster.healthy() and victim not in cluster.primaries()  # noqa: E731
        elif kind == "manual failover":
            replica = await self._blocking(cluster.replica_of, victim)
            await self._blocking(redis_cli, replica.port, "CLUSTER", "FAILOVER")
            done = lambda: cluster.healthy() and replica in cluster.primaries()  # noqa: E731
        elif kind == "migrate slot":
            others = [p for p in await self._blocking(cluster.primaries) if p.port != victim.port]
            target = others[which % len(others)]
            await self._blocking(cluster.open_migration, slot, victim, target)
            await watch("slot migrating")
            keys = await self._blocking(cluster.slot_keys, victim, slot)
            await self._blocking(cluster.migrate_keys, victim, target, keys)
            await watch("keys moved")
            await self._blocking(self._finish_migration, slot, target)
            done = cluster.healthy
        else:
            await self._blocking(redis_cli, victim.port, "FLUSHALL")
            self.model.wipe_some(affected)
            done = cluster.healthy
        await watch("at once")
        if close_seat is not None:
            await self._close_in_state(close_seat, "idle")
            outside = [p for p in outside if p.seat != close_seat]
            inside = [p for p in inside if p.seat != close_seat]
        deadline = time.monotonic() + FAULT_TIMEOUT
        while not await self._blocking(done):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not recover from {kind} within {FAULT_TIMEOUT} s")
            await watch("while the cluster recovers")
            await asyncio.sleep(0.1)
        await watch("once the cluster is ok")

    def _finish_migration(self, slot: int, target: RedisProcess) -> None:
        """The end of a resharding step: the slot assigned to `target`, told to every primary."""
        cluster = self.cluster_world.cluster
        ident = cluster.node_id(target)
        redis_cli(target.port, "CLUSTER", "SETSLOT", str(slot), "NODE", ident)
        for node in cluster.primaries():
            if node.port != target.port:
                redis_cli(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", ident)
        cluster.wait_ok(FAULT_TIMEOUT)

    async def _outside_served(self, outside: list[Primed], when: str) -> None:
        """OUTSIDE: every primed decision of a token outside the affected shard, still within its
        window, is served."""
        for p in outside:
            if self.now() > p.since + WINDOW - WINDOW_MARGIN:
                continue
            decided = await self._check(p.seat, p.token, p.front, p.client_ip)
            if not self.stats.failures:
                self.stats.outside_checks += 1
            if decided is None:
                if not self.stats.failures:
                    self.stats.unavailable_outside += 1
                self.fail(
                    "AVAILABILITY",
                    f"{self.seats[p.seat].name} check({p.token!r}) {when}: StoreUnavailable for a token "
                    f"outside the affected shard, {self.now() - p.since:.2f} s after it was read (cached)",
                )
            elif decided != p.decided and p.state == self.model.intent(p.token):
                self.fail(
                    "AVAILABILITY",
                    f"{self.seats[p.seat].name} check({p.token!r}) {when} answered {decided}, outside the "
                    f"affected shard; it was {p.decided} and nothing changed it",
                )
