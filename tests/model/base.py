"""The stateful test's plumbing: the validators it drives, the model it holds them to, how a
step runs (on the machine's own event loop), how a decision is judged, and the invariants
checked after every step.

Invariants (each violation names itself in the assertion message):
- SAFETY ("wrong allow"): a validator, or the middleware in front of it, never allows a request
  that the model denies (a deny or a 503 is always safe); an entry added with an expiry matches
  only before its instant on the validators' wall clock (`Clock.wall`), in every state a
  validator may serve, the last known rules during an outage included;
- LIVENESS: once the store is up, marked and unwiped and `sync()` returns, every validator
  decides exactly as the model within one breaker period (`settle`);
- ADMIN: the admin API and CLI do what docs/behaviour.md says (outcome, exit code, record), and the export
  is the store; ERROR: no 500 and no traceback; LEAK: no token in any log or output;
- MEMORY: Redis memory is bounded (keys and bytes) whatever the traffic;
- AVAILABILITY, STALE-BOUND, SHUTDOWN: decisions cached before an outage are served through it
  up to `ttl + max_stale` and not past it; `close()` ends within 1 s in any state
  (`tests.model.lifecycle`; the Cluster profile, `tests.model.cluster`, adds the faults of a
  Cluster and counts cached checks outside the affected shard that fail).
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis.asyncio as aioredis
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant

from tests.model import spec
from tests.model.harness import (
    READ_TIMEOUT,
    SECRET,
    STALE_WINDOW,
    TIMING,
    CliResult,
    Clock,
    LogCapture,
    World,
    asgi_request,
    follow_wall_clock,
    inject_clock,
    middleware,
    run_cli_in_process,
    run_cli_subprocess,
    token_headers,
)
from tests.model.state import ModelStore, Seen
from validator import Admin, Validator
from validator.errors import StoreUnavailable
from validator.web.middleware import TokenAccessMiddleware

T = TypeVar("T")

ISSUED = ["tk_Alpha_5f3", "tk_Bravo_8c1", "tk-Char!e~9", "tk_Delta_2b7"]
INVALID = ["tk_\u00cbcho_4d2", "tk Fox 7"]  # not visible ASCII: never a token
TOKENS = ISSUED + INVALID
# Admin operations mostly name issued tokens.
ADMIN_TOKENS = st.sampled_from(ISSUED * 4 + INVALID)
REQUEST_TOKENS = st.sampled_from([*ISSUED, *ISSUED, *INVALID, "tk_Never_000"])
VIA = st.sampled_from(["api", "api", "cli", "cli", "subprocess"])
RESTRICTIONS = st.sampled_from(["domain", "ip"])
FRONT_NAMES = st.sampled_from([front.name for front in spec.FRONTS])
CLIENT_IPS = st.sampled_from(spec.CLIENT_IPS)
PLACEMENTS = st.sampled_from(
    [
        "bearer",
        "header",
        "query",
        "bearer+header",
        "header+query",
        "bearer+query",
        "header+header",
        "query+query",
    ]
)
# A flood of never-issued tokens, and the keys the store may hold at most whatever the traffic:
# per stored token its meta, domain, IP and history keys and one denial stream; the marker; a
# few more for the unknown-token denials (one capped place, possibly sharded) and sync barriers.
FLOOD = 64
MAX_KEYS = 5 * len(TOKENS) + 1 + 24
MAX_USED_MEMORY = 64 * 1024 * 1024
STEP_TIMEOUT = 60.0
SLOW_STEP = 3.0
# How long a validator may take to have a working invalidation link again after an outage
# (its reconnection backoff grows to 2 s), and how many breaker periods an uncached check may
# still fail closed once the store is healthy (one, plus slack for a read timing out on a busy
# machine).
SETTLE_TIMEOUT = 8.0
SETTLE_ATTEMPTS = 4
SETTLE_FRONTS = ["server", "app", "deep-org", "org-apex", "bad-scheme", "sec-fetch", "referer-app"]
SETTLE_IPS = ["203.0.113.7", "::ffff:203.0.113.7", "198.51.100.20", "2606:4700::1111", "33.1.2.3", ""]


class Violation(AssertionError):
    """An invariant broken by the product (the message names the invariant)."""


@dataclass
class Stats:
    steps: int = 0
    sequences: int = 0
    wrong_allows: int = 0
    liveness: int = 0
    other: int = 0
    # Availability (P-STALE-IF-ERROR): checks of decisions cached before an outage, those that
    # raised StoreUnavailable, those served past ttl + max_stale; on a Cluster, the unavailable
    # ones of tokens outside the shard the fault hit.
    outage_checks: int = 0
    unavailable_cached: int = 0
    served_past_window: int = 0
    outside_checks: int = 0
    unavailable_outside: int = 0
    # Shutdown (P-CLOSE-PROMPT): closes, the slowest (s), those over the 1 s promise.
    closes: int = 0
    close_max: float = 0.0
    closes_over_promise: int = 0
    closes_over_bound: int = 0  # failures of the shutdown rule (counted when lenient)
    shutdown_failures: list[str] = field(default_factory=list)
    close_max_by_state: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per kind of step
    calls: collections.Counter[str] = field(default_factory=collections.Counter)  # steps per kind
    # What the exploration reached: decisions by outcome, admin outcomes, wipes, restores...
    events: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Seat:
    """One validator with its policy for unknown tokens, and the middleware in front of it."""

    name: str
    unknown: str
    validator: Validator
    app: TokenAccessMiddleware


def _skipped() -> frozenset[str]:
    # TAV_MODEL_SKIP=name,... turns off the triggers of known defects, so that a run on a tree
    # that has them can look for the next one: flood, noop-ops, nonascii, bad-url, force, demo,
    # hostile-ips, zone, hostile-domains, cli-truth, unmarked-writes, eviction, decoy,
    # bad-origin, liveness, corrupt, export-corrupt, expiry (no entry is added with an expiry).
    return frozenset(f.strip() for f in os.environ.get("TAV_MODEL_SKIP", "").split(",") if f.strip())


class Base(RuleBasedStateMachine):
    """The plumbing of the machine: the world, the model, the validators, judging and tracing.
    Class attributes are set by whoever runs it (`tests.model.run`)."""

    world: ClassVar[World]
    stats: ClassVar[Stats] = Stats()
    deadline: ClassVar[float] = math.inf
    strict: ClassVar[bool] = os.environ.get("TAV_MODEL_STRICT", "1") != "0"
    skip: ClassVar[frozenset[str]] = _skipped()

    def __init__(self) -> None:
        super().__init__()
        # Past the deadline new sequences do nothing, unless a failure is being shrunk.
        self.active = time.monotonic() < self.deadline or bool(self.stats.failures)
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        follow_wall_clock(self.clock)
        self.virtual_time = True
        self.logs = LogCapture()
        self.logs.install()
        self.seats: list[Seat] = []
        self.model = ModelStore(STALE_WINDOW, [Seen(unknown_allowed=True), Seen(unknown_allowed=False)])
        self.diverged: set[str] = set()  # tokens whose record the model lost track of (lenient mode)
        self.diverged_store = False
        self.exports: list[tuple[Path, dict[str, spec.State]]] = []
        self.runs = {"bad-url": 0, "demo": 0}
        self.started = False
        self.trace: list[str] = []
        self.quiet = False  # not counting the decisions of a flood
        self.world.ensure_up()
        self.raw = aioredis.Redis.from_url(self.world.url, decode_responses=True, socket_timeout=2.0)
        self.admin = Admin.from_url(self.world.url, secret=SECRET)
        if self.active and not self.stats.failures:
            self.stats.sequences += 1

    # ---------------------------------------------------------------------------------- plumbing

    def run(self, work: Coroutine[Any, Any, T], timeout: float = STEP_TIMEOUT) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(work, timeout))

    def step(self, work: Coroutine[Any, Any, None]) -> None:
        if not self.active:
            work.close()
            return
        if not self.stats.failures:  # replays while a failure is shrunk are not exploration
            self.stats.steps += 1
        # The coroutine names the step, and its frame holds the arguments (for the trace).
        name = str(getattr(work, "__qualname__", "step")).rsplit(".", 1)[-1].lstrip("_")
        frame = getattr(work, "cr_frame", None)
        arguments = {k: v for k, v in (frame.f_locals if frame else {}).items() if k != "self"}
        self.trace.append(f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})")
        started = time.monotonic()
        try:
            self.run(work)
        finally:
            elapsed = time.monotonic() - started
            self.stats.seconds[name] = self.stats.seconds.get(name, 0.0) + elapsed
            self.stats.calls[name] += 1
            if elapsed > SLOW_STEP:
                print(f"slow step ({elapsed:.1f} s): {self.trace[-1]}", file=sys.stderr)

    def fail(self, kind: str, message: str) -> None:
        steps = "\n".join(f"  {n}. {line}" for n, line in enumerate(self.trace, 1))
        text = f"{kind}: {message}\nthe sequence that led here:\n{steps}"
        if not self.stats.failures:  # count the first failure, not its replays while shrinking
            if kind == "SAFETY":
                self.stats.wrong_allows += 1
            elif kind == "LIVENESS":
                self.stats.liveness += 1
            elif kind in ("AVAILABILITY", "SHUTDOWN", "STALE-BOUND"):
                pass  # counted where found (`tests.model.lifecycle`)
            else:
                self.stats.other += 1
            self.stats.failures.append(text)
        raise Violation(text)

    def diverge(self, message: str, lost: set[str] | None) -> None:
        """The product did something else than docs/behaviour.md says: a failure in strict mode. In lenient
        mode the test carries on, noting the records the model may no longer know (`lost`; None:
        any of them), which liveness then leaves out; safety still holds the product to the
        admin's intent."""
        if self.strict:
            self.fail("ADMIN", message)
        if lost is None:
            self.diverged_store = True
        else:
            self.diverged |= lost

    def count(self, event: str) -> None:
        if not self.stats.failures and not self.quiet:
            self.stats.events[event] += 1

    async def cli(self, via: str, args: list[str]) -> CliResult:
        full = ["--store", self.world.url, *args]
        if via == "subprocess":
            result = await run_cli_subprocess(self.world, full)
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, run_cli_in_process, full)
        self._cli_hygiene(args, result)
        return result

    def _cli_hygiene(self, args: list[str], result: CliResult) -> None:
        if not result.one_line_error():
            self.fail(
                "ERROR",
                f"`validator-admin {' '.join(args)}` ({result.how}) printed a traceback:\n{result.err}",
            )
        for token in TOKENS:
            if token in result.out or token in result.err:
                self.fail(
                    "LEAK", f"`validator-admin {' '.join(args)}` ({result.how}) printed the token {token!r}"
                )

    @staticmethod
    def _kinds_of_exit(code: int) -> frozenset[str]:
        return frozenset(
            {
                0: {"ok"},
                1: {"noop", "invalid", "limit"},
                2: {"invalid", "uninitialised", "evicting", "limit"},
                3: {"unavailable"},
            }.get(code, {"error"})
        )

    @property
    def up(self) -> bool:
        return self.world.server.running

    @property
    def serving(self) -> bool:
        """Up and answering (not stopped by SIGSTOP)."""
        return self.up and not self.world.frozen

    def now(self) -> float:
        return self.clock()

    def wall_ms(self) -> float:
        """The validators' wall clock now, in ms since the epoch (what entries expire by)."""
        return self.clock.wall() * 1000

    async def _raw(self, *args: str) -> Any:
        # The server may have restarted since the pooled connection was made: one retry.
        for attempt in range(2):
            try:
                return await self.raw.execute_command(*args)  # type: ignore[no-untyped-call]
            except (ConnectionError, OSError, aioredis.ConnectionError):
                if attempt:
                    raise
        return None

    def _link(self, seat: Seat) -> tuple[int, int]:
        listener = seat.validator.listener
        if listener is None:
            return (-1, -1)
        return (getattr(listener, "resets", -1), getattr(listener, "connections", -1))

    async def _sync_all(self, before: list[tuple[int, int]]) -> list[bool]:
        """For each validator: did it certainly see every change made since `before` (its
        invalidation link was up throughout and a `sync()` barrier came back)?"""
        delivered: list[bool] = []
        for seat, mark in zip(self.seats, before, strict=True):
            listener = seat.validator.listener
            seen = False
            if self.serving and listener is not None and listener.connected.is_set():
                try:
                    await seat.validator.sync(timeout=1.0)
                except StoreUnavailable:
                    pass
                else:
                    seen = self._link(seat) == mark
            delivered.append(seen)
        return delivered

    # ---------------------------------------------------------------------------------- lifecycle

    async def _new_seat(self, name: str, unknown: str, *, connect: bool = True) -> Seat:
        v = Validator.from_url(
            self.world.url,
            secret=SECRET,
            timeout=READ_TIMEOUT,
            connect_timeout=READ_TIMEOUT,
            unknown_token="allow" if unknown == "allow" else "deny",
            ttl=TIMING["ttl"],
            unknown_ttl=TIMING["unknown_ttl"],
            max_stale=TIMING["max_stale"],
            incoherent_ttl=TIMING["incoherent_ttl"],
            ping_interval=TIMING["ping_interval"],
            ping_timeout=TIMING["ping_timeout"],
            breaker_reset=TIMING["breaker_reset"],
            marker_interval=TIMING["marker_interval"],
        )
        if not inject_clock(v, self.clock):
            self.virtual_time = False
        if connect:
            await v.connect(wait=1.0 if self.serving else 0.3)
        return Seat(name, unknown, v, middleware(v))

    async def _setup(self, start: str) -> None:
        await self._raw("FLUSHALL")
        await self._raw("CONFIG", "SET", "maxmemory-policy", "noeviction")
        if start == "down":
            self.world.server.kill()
            self.world.server.discard_data()
        for name, unknown in (("allow-validator", "allow"), ("deny-validator", "deny")):
            self.seats.append(await self._new_seat(name, unknown))
        if start == "init":
            await self.admin.init()
            self.model.marked = True

    @initialize(start=st.sampled_from(["init", "init", "fresh", "down"]))
    def begin(self, start: str) -> None:
        """Validators start on an initialised store, an empty unmarked one, or no Redis at all."""
        self.started = True
        self.trace.append(f"begin(start={start!r})")
        self.run(self._setup(start))

    def teardown(self) -> None:
        try:
            if self.world.frozen:
                self.world.server.signal(signal.SIGCONT)
                self.world.frozen = False
            self.run(self._close(), timeout=30)
        finally:
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=5))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.logs.remove()
            follow_wall_clock(None)

    async def _close(self) -> None:
        for seat in self.seats:
            await seat.validator.close()
        await self.admin.close()
        await self.raw.aclose()

    # ---------------------------------------------------------------------------------- judging

    def judge(
        self,
        seat: int,
        token: str,
        front: spec.Front,
        client_ip: str | None,
        allowed: bool,
        since: float,
        how: str,
        since_ms: float,
    ) -> None:
        """`since` (`since_ms`): the caches' clock (the wall clock) when the request was made; an
        entry that expires may match only if it had not lapsed by then."""
        unknown_allowed = self.seats[seat].unknown == "allow"
        if not allowed:
            intent = self.model.intent(token)
            if (
                intent is not None
                and spec.is_token(token)
                and not front.ambiguous
                and (intent.domain_expiry or intent.ip_expiry)
                and spec.allows(intent, front, client_ip, unknown_allowed=False, now_ms=-math.inf)
                and not spec.allows(intent, front, client_ip, unknown_allowed=False, now_ms=since_ms)
            ):
                self.count("denied: the entry that allowed it has expired")
            self.count("denied")
            return
        if not self.model.may_allow(seat, token, front, client_ip, since, since_ms):
            self.fail(
                "SAFETY",
                f"{self.seats[seat].name} ALLOWED {how} token={token!r} front={front.name} "
                f"client_ip={client_ip!r}, which the model denies "
                f"({self.model.explain(seat, token, since, since_ms)})",
            )
        intended = spec.allows(
            self.model.intent(token), front, client_ip, unknown_allowed=unknown_allowed, now_ms=since_ms
        )
        self.count("allowed" if intended else "allowed by an older state (within the stale window)")

    async def _check(
        self, seat: int, token: str, front: spec.Front, client_ip: str | None, cached: bool = False
    ) -> bool | None:
        """One `check()` (or `check_cached()`); the decision (None: 503 or nothing cached)."""
        v = self.seats[seat].validator
        since, since_ms = self.now(), self.wall_ms()
        try:
            if cached:
                found = v.check_cached(
                    token,
                    origin=front.origin,
                    referer=front.referer,
                    sec_fetch=front.sec_fetch,
                    client_ip=client_ip,
                )
                if found is None:
                    return None
                decision = found
            else:
                decision = await v.check(
                    token,
                    origin=front.origin,
                    referer=front.referer,
                    sec_fetch=front.sec_fetch,
                    client_ip=client_ip,
                )
        except StoreUnavailable:
            self.count("503")
            return None
        except Exception as error:
            self.fail("ERROR", f"check({token!r}, front={front.name}) raised {error!r}: a 500, not a 503")
        self.judge(
            seat,
            token,
            front,
            client_ip,
            decision.allowed,
            since,
            "check_cached()" if cached else "check()",
            since_ms,
        )
        return decision.allowed

    async def _request(
        self, seat: int, placement: str, first: str, second: str, front: spec.Front, client_ip: str | None
    ) -> int:
        headers, query = token_headers(placement, first, second)
        if front.origin is not None:
            headers.append((b"origin", front.origin.encode()))
        if front.referer is not None:
            headers.append((b"referer", front.referer.encode()))
        if front.sec_fetch:
            headers.append((b"sec-fetch-mode", b"cors"))
        headers.extend(front.raw_headers)
        since, since_ms = self.now(), self.wall_ms()
        status, seen = await asgi_request(self.seats[seat].app, headers, query, client_ip or None)
        tokens = {first, second} if "+" in placement else {first}
        how = f"through the middleware ({placement}: {sorted(tokens)!r})"
        if status == 200:
            if len(tokens) > 1:
                self.fail("SAFETY", f"{self.seats[seat].name} ALLOWED {how}: two different tokens (a decoy)")
            self.judge(seat, first, front, client_ip, True, since, how, since_ms)
            if seen != first:
                self.fail("SAFETY", f"{how}: the app was handed {seen!r}, not the token that was checked")
        elif status not in (403, 503):
            self.fail("ERROR", f"{how} answered {status}")
        else:
            self.count("denied" if status == 403 else "503")
        if self.strict and status != 403 and (len(tokens) > 1 or front.ambiguous or not spec.is_token(first)):
            self.fail(
                "ADMIN",
                f"{how} front={front.name}: answered {status}, behaviour.md says 403 without a look-up",
            )
        return status

    async def _pass(self, seconds: float) -> None:
        if self.virtual_time:
            self.clock.advance(seconds)
            await asyncio.sleep(0.02)
        else:
            await asyncio.sleep(seconds)

    # ---------------------------------------------------------------------------------- invariants

    async def _memory(self) -> None:
        keys = int(await self._raw("DBSIZE"))
        info = await self.raw.info("memory")
        used = int(info["used_memory"])
        if keys > MAX_KEYS or used > MAX_USED_MEMORY:
            self.fail(
                "MEMORY",
                f"Redis holds {keys} keys and {used} bytes; the bound is {MAX_KEYS} keys, "
                f"{MAX_USED_MEMORY} bytes, whatever the traffic",
            )

    @invariant()
    def memory_bounded(self) -> None:
        if self.active and self.serving:
            self.run(self._memory())

    @invariant()
    def no_token_in_logs(self) -> None:
        for record in self.logs.records:
            text = self.logs.text(record)
            for token in TOKENS:
                if token in text:
                    self.fail("LEAK", f"a log record shows the token {token!r}: {text[:300]}")
        self.logs.records.clear()
