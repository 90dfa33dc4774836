"""Requests: `check()` and `check_cached()` on both validators, requests through the ASGI
middleware with the token in one or two places, a flood of never-issued tokens, and `settle`,
the liveness check."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.model import spec
from tests.model.base import (
    CLIENT_IPS,
    FLOOD,
    FRONT_NAMES,
    PLACEMENTS,
    REQUEST_TOKENS,
    SETTLE_ATTEMPTS,
    SETTLE_FRONTS,
    SETTLE_IPS,
    SETTLE_TIMEOUT,
    SLOW_STEP,
    TOKENS,
    Base,
    Seat,
)
from tests.model.harness import (
    TIMING,
)
from validator.errors import StoreUnavailable


class RequestRules(Base):
    # ---------------------------------------------------------------------------------- rules: requests

    @rule(
        seat=st.integers(0, 1),
        token=REQUEST_TOKENS,
        front=FRONT_NAMES,
        client_ip=CLIENT_IPS,
        cached=st.booleans(),
    )
    def check(self, seat: int, token: str, front: str, client_ip: str, cached: bool) -> None:
        if not spec.is_token(token) and "nonascii" in self.skip:
            return
        self.step(self._check_rule(seat, token, spec.FRONT_BY_NAME[front], client_ip, cached))

    async def _check_rule(
        self, seat: int, token: str, front: spec.Front, client_ip: str, cached: bool
    ) -> None:
        await self._check(seat, token, front, client_ip or None, cached)

    @rule(front=FRONT_NAMES, client_ip=CLIENT_IPS)
    def sweep(self, front: str, client_ip: str) -> None:
        """The same request with every token, on both validators."""
        self.step(self._sweep(spec.FRONT_BY_NAME[front], client_ip or None))

    async def _sweep(self, front: spec.Front, client_ip: str | None) -> None:
        for seat in range(len(self.seats)):
            for token in TOKENS:
                if spec.is_token(token) or "nonascii" not in self.skip:
                    await self._check(seat, token, front, client_ip)

    @rule(
        seat=st.integers(0, 1),
        placement=PLACEMENTS,
        first=REQUEST_TOKENS,
        second=REQUEST_TOKENS,
        front=st.sampled_from([f.name for f in spec.FRONTS] + [f.name for f in spec.MIDDLEWARE_FRONTS]),
        client_ip=CLIENT_IPS,
    )
    def request(self, seat: int, placement: str, first: str, second: str, front: str, client_ip: str) -> None:
        """A request through the ASGI middleware, the token in one or two places."""
        if "+" in placement and first != second and "decoy" in self.skip:
            second = first
        if "nonascii" in self.skip and not (spec.is_token(first) and spec.is_token(second)):
            return
        chosen = spec.FRONT_BY_NAME.get(front) or next(f for f in spec.MIDDLEWARE_FRONTS if f.name == front)
        if chosen.name == "bad-scheme" and "bad-origin" in self.skip:
            return
        self.step(self._request_rule(seat, placement, first, second, chosen, client_ip))

    async def _request_rule(
        self, seat: int, placement: str, first: str, second: str, front: spec.Front, client_ip: str
    ) -> None:
        await self._request(seat, placement, first, second, front, client_ip)

    @precondition(lambda self: self.serving and "flood" not in self.skip)
    @rule(go=st.integers(0, 3))
    def flood(self, go: int) -> None:
        """Never-issued tokens on the validator that denies unknown tokens (each one a denial).
        One draw in four: a sequence that swarm testing leaves few other rules would flood on."""
        if go == 0:
            self.step(self._flood())

    async def _flood(self) -> None:
        front = spec.FRONT_BY_NAME["server"]
        self.count("flood")
        self.quiet = True
        try:
            for _ in range(FLOOD):
                await self._check(1, f"fl{uuid.uuid4().hex}", front, "203.0.113.9")
        finally:
            self.quiet = False
        log = self.seats[1].validator.denial_log
        if log is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.flush(), 2.0)
        await self._memory()

    # ---------------------------------------------------------------------------------- liveness

    @precondition(
        lambda self: (
            self.serving
            and self.model.marked
            and self.model.lost is None
            and not self.diverged_store
            and "liveness" not in self.skip
        )
    )
    @rule()
    def settle(self) -> None:
        """LIVENESS: healthy and marked, `sync()` returns, then within one breaker period every
        validator decides exactly as the model."""
        self.step(self._settle())

    async def _settle(self) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        for seat in self.seats:
            listener = seat.validator.listener
            assert listener is not None
            while True:
                try:
                    await asyncio.wait_for(listener.connected.wait(), max(0.01, deadline - time.monotonic()))
                    await seat.validator.sync(timeout=1.0)
                    break
                except (TimeoutError, StoreUnavailable) as error:
                    if time.monotonic() > deadline:
                        self.fail(
                            "LIVENESS",
                            f"{seat.name}: no working invalidation link / sync() within "
                            f"{SETTLE_TIMEOUT}s of a healthy store ({error!r})",
                        )
                    await asyncio.sleep(0.05)
        synced = time.monotonic()
        await self._pass(TIMING["breaker_reset"] + 0.01)
        tokens = [t for t in TOKENS if t not in self.model.corrupt and t not in self.diverged]
        if "nonascii" in self.skip:
            tokens = [t for t in tokens if spec.is_token(t)]
        for index, seat in enumerate(self.seats):
            for token in tokens:
                for name in SETTLE_FRONTS:
                    front = spec.FRONT_BY_NAME[name]
                    if name == "bad-scheme" and "bad-origin" in self.skip:
                        continue
                    for client_ip in SETTLE_IPS if not front.browser else SETTLE_IPS[:1]:
                        await self._settled(index, seat, token, front, client_ip or None, "check")
                if spec.is_token(token):
                    await self._settled(
                        index, seat, token, spec.FRONT_BY_NAME["server"], "203.0.113.7", "header"
                    )
                    await self._settled(index, seat, token, spec.FRONT_BY_NAME["app"], None, "bearer+header")
        self.count("settled (liveness held)")
        began = deadline - SETTLE_TIMEOUT
        if time.monotonic() - began > SLOW_STEP:
            checks = time.monotonic() - synced
            print(f"settle: sync {synced - began:.1f} s, checks {checks:.1f} s", file=sys.stderr)

    async def _settled(
        self, index: int, seat: Seat, token: str, front: spec.Front, client_ip: str | None, how: str
    ) -> None:
        """One request decided exactly as the model says, after at most a few breaker periods
        (as the model says at the wall clock before or after it, when an entry lapses between)."""
        intent = self.model.intent(token)
        unknown_allowed = seat.unknown == "allow"
        before_ms = self.wall_ms()
        for attempt in range(SETTLE_ATTEMPTS):
            if how == "check":
                decided = await self._check(index, token, front, client_ip)
            else:
                status = await self._request(index, how, token, token, front, client_ip)
                decided = None if status == 503 else status == 200
            if decided is not None:
                break
            if attempt == SETTLE_ATTEMPTS - 1:
                self.fail(
                    "LIVENESS",
                    f"{seat.name} still fails closed (503) for token={token!r} front={front.name} "
                    f"client_ip={client_ip!r} ({how}) {SETTLE_ATTEMPTS} breaker periods after the store "
                    f"became healthy and marked and sync() returned "
                    f"(breaker {getattr(seat.validator.breaker, 'state', '?')})",
                )
            await self._pass(TIMING["breaker_reset"] + 0.01)
        expected = {
            spec.is_token(token)
            and spec.allows(intent, front, client_ip, unknown_allowed=unknown_allowed, now_ms=at)
            for at in (before_ms, self.wall_ms())
        }
        if decided not in expected:
            self.fail(
                "LIVENESS",
                f"{seat.name} {'allows' if decided else 'denies'} token={token!r} front={front.name} "
                f"client_ip={client_ip!r} ({how}) on a healthy, synced store; the model says "
                f"{'allowed' if True in expected else 'denied'} "
                f"({self.model.explain(index, token, self.now(), before_ms)})",
            )
