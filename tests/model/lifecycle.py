"""Availability and shutdown, for every profile of the stateful test (issue 22 item 6).

- AVAILABILITY (docs/behaviour.md "Stale-if-error", P-STALE-IF-ERROR): a decision read from a
  sound store before an outage is served during it (not `StoreUnavailable`) while its entry is
  within `ttl + max_stale` of the read, and it is the model's decision as of that read (the rules
  then, without the entries that have lapsed since); past that window nothing is served from it.
- SHUTDOWN (P-CLOSE-PROMPT): `close()` ends within `CLOSE_PROMISE` (1 s) in whatever state the
  machine is in (connected, connecting, backing off, a read in flight, the store dead or hanging),
  leaves none of the validator's tasks running, and a read in flight ends too; then the machine
  carries on with a fresh validator.

`Lifecycle` holds the rule and helpers both machines use; `OutageAvailability` the single-server
rule that primes the caches, breaks the store, and checks the primed decisions during the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.model import spec
from tests.model.base import ISSUED, SETTLE_TIMEOUT, Base
from tests.model.harness import TIMING
from validator import Validator
from validator.errors import StoreUnavailable

# The promise (docs/behaviour.md, P-CLOSE-PROMPT), and the bound the test fails at: the promise
# with room for a loaded 2-core machine. Closes over the promise are counted either way.
CLOSE_PROMISE = 1.0
CLOSE_BOUND = float(os.environ.get("TAV_MODEL_CLOSE_BOUND", "2.0"))
# How long a close may take at all before the test stops waiting (a hang, reported as such).
CLOSE_GIVE_UP = 15.0
# Decisions primed before an outage: tokens that need a read, on fronts that need no guess.
PRIME_TOKENS = st.sampled_from([*ISSUED, "tk_Never_000"])
PRIME_FRONTS = st.sampled_from(["server", "app", "deep-org", "referer-app"])
PRIME_IPS = st.sampled_from(["203.0.113.7", "198.51.100.20", "2606:4700::1111", "33.1.2.3"])
CLOSE_STATES = ["idle", "idle", "mid-read", "connecting", "link-cut"]
# A read past this part of the window is not asked to be served (the clock also runs for real).
WINDOW = TIMING["ttl"] + TIMING["max_stale"]
WINDOW_MARGIN = 0.4  # a read that times out (0.25 s) then falls back to the cache
PAST_WINDOW = 0.3


@dataclass
class Primed:
    """One decision read from a sound store (`since`..`after` on the caches' clock)."""

    seat: int
    token: str
    front: spec.Front
    client_ip: str
    decided: bool
    state: spec.State
    since: float
    after: float
    group: str = ""  # the shard it lives in (Cluster), for the figures


class Lifecycle(Base):
    """What both machines share: priming decisions, checking them in an outage, closing."""

    # TAV_MODEL_LENIENT=availability,shutdown: count those failures instead of stopping at the
    # first (a soak on a tree with a known defect, to see how often and go on exploring).
    enforce_availability: bool = "availability" not in os.environ.get("TAV_MODEL_LENIENT", "")
    enforce_shutdown: bool = "shutdown" not in os.environ.get("TAV_MODEL_LENIENT", "")

    # ---------------------------------------------------------------------------------- priming

    async def _all_synced(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Every validator has a working invalidation link and a `sync()` came back."""
        deadline = time.monotonic() + timeout
        for seat in self.seats:
            listener = seat.validator.listener
            if listener is None:
                return False
            while True:
                try:
                    await asyncio.wait_for(listener.connected.wait(), max(0.01, deadline - time.monotonic()))
                    await seat.validator.sync(timeout=1.0)
                    break
                except (TimeoutError, StoreUnavailable):
                    if time.monotonic() > deadline:
                        return False
                    await asyncio.sleep(0.05)
        return True

    async def _prime(self, probes: list[tuple[int, str, str, str]]) -> list[Primed]:
        """Check each probe after every entry went past its freshness (so each is read from the
        store now, coherent): the decisions an outage must keep serving."""
        await self._pass(TIMING["ttl"] + 0.05)
        primed: list[Primed] = []
        for seat, token, front_name, client_ip in probes:
            if token in self.model.corrupt or token in self.diverged:
                continue
            front = spec.FRONT_BY_NAME[front_name]
            since = self.now()
            state = self.model.intent(token)
            decided = await self._check(seat, token, front, client_ip)
            if decided is None:
                continue  # nothing read, nothing cached
            if self.seats[seat].validator.cache.usable(token) is None:
                # Read but not kept (an invalidation or a topology change while it was read):
                # not a decision cached before the outage.
                self.count("primed: read but not cached")
                continue
            primed.append(Primed(seat, token, front, client_ip, decided, state, since, self.now()))
        self.count(f"primed decisions {min(len(primed), 4)}")
        return primed

    async def _still_served(self, primed: list[Primed], when: str, *, shard_note: str = "") -> None:
        """Each primed decision still within its window is served as it was read."""
        for p in primed:
            if self.now() > p.since + WINDOW - WINDOW_MARGIN:
                continue  # near the end of its window: not asked
            unknown_allowed = self.seats[p.seat].unknown == "allow"
            before_ms = self.wall_ms()
            decided = await self._check(p.seat, p.token, p.front, p.client_ip)
            expected = {
                spec.allows(p.state, p.front, p.client_ip, unknown_allowed=unknown_allowed, now_ms=at)
                for at in (before_ms, self.wall_ms())
            }
            self.stats.outage_checks += 0 if self.stats.failures else 1
            age = self.now() - p.since
            what = (
                f"{self.seats[p.seat].name} check({p.token!r}, front={p.front.name}, "
                f"client_ip={p.client_ip!r}) {when}, {age:.2f} s after it was read from a sound "
                f"store (usable for {WINDOW:.1f} s: ttl + max_stale){shard_note}"
            )
            if decided is None:
                if not self.stats.failures:
                    self.stats.unavailable_cached += 1
                if self.enforce_availability:
                    self.fail(
                        "AVAILABILITY", f"{what} raised StoreUnavailable; the cached decision was {p.decided}"
                    )
                self.count("availability: cached decision not served")
            elif decided not in expected:
                if self.enforce_availability:
                    self.fail(
                        "AVAILABILITY",
                        f"{what} answered {decided}; the rules as last read say {expected} "
                        f"({spec.describe(p.state)})",
                    )
            else:
                self.count("availability: cached decision served in an outage")

    async def _not_served_past(self, primed: list[Primed], when: str) -> None:
        """Past `ttl + max_stale` from its read nothing is served from an entry (fail closed)."""
        for p in primed:
            if self.now() < p.after + WINDOW + PAST_WINDOW:
                continue
            decided = await self._check(p.seat, p.token, p.front, p.client_ip)
            if decided is not None:
                if not self.stats.failures:
                    self.stats.served_past_window += 1
                self.fail(
                    "STALE-BOUND",
                    f"{self.seats[p.seat].name} check({p.token!r}, front={p.front.name}) {when} answered "
                    f"{decided} {self.now() - p.after:.2f} s after it was read, the store still down: "
                    f"past ttl + max_stale ({WINDOW:.1f} s), it must fail closed",
                )
            self.count("stale bound: failed closed past max_stale")

    # ---------------------------------------------------------------------------------- shutdown

    def _store_state(self) -> str:
        return "store up" if self.serving else ("store hanging (SIGSTOP)" if self.up else "store dead")

    @precondition(lambda self: self.started)
    @rule(seat=st.integers(0, 1), during=st.sampled_from(CLOSE_STATES))
    def close_validator(self, seat: int, during: str) -> None:
        """SHUTDOWN: close a validator in the state the machine is in (and, drawn, with a read in
        flight, while it connects, or just after its invalidation link was cut); it ends within
        1 s and leaves no task behind; then a fresh validator takes its place."""
        self.step(self._close_in_state(seat, during))

    async def _cut_links(self) -> None:
        """Drop the invalidation connections (the single-server machine can; others do nothing)."""

    async def _close_in_state(self, seat: int, during: str) -> None:
        old = self.seats[seat]
        target: Validator = old.validator
        in_flight: asyncio.Task[Any] | None = None
        if during == "connecting":
            # The old one closes as it is, and counts; the new one is closed while it connects.
            await self._timed_close(old.validator, f"idle, {self._store_state()}", [])
            fresh = await self._new_seat(old.name, old.unknown, connect=False)
            target = fresh.validator
            in_flight = asyncio.ensure_future(target.connect(wait=2.0))
            await asyncio.sleep(0.01)
        elif during == "mid-read":
            token = f"tk_close_{uuid.uuid4().hex[:12]}"
            in_flight = asyncio.ensure_future(target.check(token, client_ip="203.0.113.9"))
            await asyncio.sleep(0.02)
        elif during == "link-cut" and self.serving:
            await self._cut_links()
        if during == "connecting" and in_flight is not None:
            # `connect(wait=...)` is the caller's own wait, bounded by its argument: not part of
            # the close (its background work is: the listener it started).
            await self._timed_close(target, f"{during}, {self._store_state()}", [], caller=in_flight)
            done, _ = await asyncio.wait({in_flight}, timeout=3.0)
            if not done:
                in_flight.cancel()
                self.fail("SHUTDOWN", "connect(wait=2.0) still waiting 3 s after close() began")
            with contextlib.suppress(BaseException):
                in_flight.result()
        else:
            await self._timed_close(
                target, f"{during}, {self._store_state()}", [in_flight] if in_flight else []
            )
        self.seats[seat] = await self._new_seat(old.name, old.unknown)
        self.model.seats[seat].older.clear()
        self.logs.records.clear()

    async def _timed_close(
        self,
        target: Validator,
        state: str,
        in_flight: list[asyncio.Future[Any]],
        caller: asyncio.Future[Any] | None = None,
    ) -> None:
        """Close `target`, timed; its tasks (but `caller`'s, the application's own call) and the
        reads `in_flight` must be over within the bound."""
        owned = _parts_of(target)
        started = time.monotonic()
        close = asyncio.ensure_future(target.close())
        done, _ = await asyncio.wait({close}, timeout=CLOSE_GIVE_UP)
        elapsed = time.monotonic() - started
        hung = not done
        if done:
            error = close.exception()
            if error is not None:
                self.fail("SHUTDOWN", f"close() ({state}) raised {error!r}")
        else:
            close.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({close}, timeout=2.0)
        # What it started must be over by the bound too: its own tasks, the read in flight.
        left: list[str] = []
        while True:
            left = [
                _name(t)
                for t in asyncio.all_tasks()
                if not t.done() and t is not caller and _owner(t) in owned
            ]
            left += [f"the {_name(f)} in flight" for f in in_flight if not f.done()]
            if not left or time.monotonic() - started > CLOSE_BOUND:
                break
            await asyncio.sleep(0.01)
        ended = time.monotonic() - started
        for future in in_flight:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a read cut short by close() may raise
            elif not future.done():
                future.cancel()
        if not self.stats.failures:
            self.stats.closes += 1
            self.stats.close_max = max(self.stats.close_max, ended)
            if ended > CLOSE_PROMISE:
                self.stats.closes_over_promise += 1
            kind = state.split(",", maxsplit=1)[0]
            self.stats.close_max_by_state[kind] = max(self.stats.close_max_by_state.get(kind, 0.0), ended)
        self.count(f"close ({state})")
        if hung or ended > CLOSE_BOUND or left:
            message = (
                f"close() ({state}) "
                + (
                    f"did not return within {CLOSE_GIVE_UP:.0f} s"
                    if hung
                    else f"returned after {elapsed:.2f} s"
                )
                + (f"; still running {ended:.2f} s after it began: {', '.join(left)}" if left else "")
                + f" (the promise: within {CLOSE_PROMISE:.0f} s; the test's bound {CLOSE_BOUND:.1f} s)"
            )
            if not self.stats.failures:
                self.stats.closes_over_bound += 1
                self.stats.shutdown_failures.append(message)
            if self.enforce_shutdown:
                self.fail("SHUTDOWN", message)
            self.count("shutdown: over the bound")


def _parts_of(target: Validator) -> set[int]:
    parts: list[object] = [target, target.listener, target.denial_log, target.store, target.cache]
    parts.append(getattr(target, "shards", None))
    return {id(part) for part in parts if part is not None}


def _owner(task: asyncio.Future[Any]) -> int:
    """The id of the object whose method the task runs (0 if none)."""
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    frame = getattr(coro, "cr_frame", None)
    owner = frame.f_locals.get("self") if frame is not None else None
    return id(owner) if owner is not None else 0


def _name(future: asyncio.Future[Any]) -> str:
    coro = future.get_coro() if isinstance(future, asyncio.Task) else None
    return str(getattr(coro, "__qualname__", None) or future)


class OutageAvailability(Lifecycle):
    """The single server: decisions primed on a sound store, then a SIGKILL or a SIGSTOP."""

    @precondition(
        lambda self: (
            self.serving
            and self.model.marked
            and self.model.lost is None
            and not self.model.evicting
            and not self.diverged_store
        )
    )
    @rule(
        kind=st.sampled_from(["kill, data saved", "kill, data lost", "sigstop"]),
        probes=st.lists(
            st.tuples(st.integers(0, 1), PRIME_TOKENS, PRIME_FRONTS, PRIME_IPS), min_size=1, max_size=4
        ),
    )
    def cached_through_outage(self, kind: str, probes: list[tuple[int, str, str, str]]) -> None:
        """AVAILABILITY: decisions read from a sound store, then the store fails: each is served
        at once, once the validators noticed (0.1 s), and late in `max_stale`, as it was read;
        past `ttl + max_stale` none is."""
        self.step(self._cached_through_outage(kind, probes))

    async def _cached_through_outage(self, kind: str, probes: list[tuple[int, str, str, str]]) -> None:
        if not await self._all_synced():
            self.count("availability: not synced, skipped")
            return
        primed = await self._prime(probes)
        if not primed:
            return
        await self._outage(kind)  # type: ignore[attr-defined]
        when = f"after {kind}"
        await self._still_served(primed, f"at once {when}")
        await asyncio.sleep(0.1)
        await self._still_served(primed, f"0.1 s {when}")
        late = min(p.since for p in primed) + TIMING["ttl"] + 0.5 * TIMING["max_stale"]
        if self.now() < late:
            await self._pass(late - self.now())
            await self._still_served(primed, f"past ttl, within max_stale, {when}")
        await self._pass(max(p.after for p in primed) + WINDOW + PAST_WINDOW - self.now() + 0.01)
        await self._not_served_past(primed, when)

    async def _cut_links(self) -> None:
        await self._kill_links(True)  # type: ignore[attr-defined]
