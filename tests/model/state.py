"""The model's view of the store and of what each validator may still act on.

`stored` is what Redis holds per docs/behaviour.md. After a wipe (FLUSHALL, a restart without data) the
admin's intent is what was stored before it (`lost`), until an `init` or a restore makes the
store the intent again. A validator may act on the intent, or on an older state of a token for a
bounded time when it may not have seen the change (its invalidation link was down):
README "Coherence and outages" promises no more than `ttl` (fresh) plus `max_stale`
(stale-if-error while the store fails) after the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tests.model.spec import Front, State, allows, clock_text, is_token


@dataclass
class Seen:
    """Older states of each token that one validator may still serve, each until a deadline
    (on the clock its cache reads)."""

    unknown_allowed: bool
    older: dict[str, list[tuple[State, float]]] = field(default_factory=dict)

    def states(self, token: str, now: float) -> list[State]:
        kept = [(state, until) for state, until in self.older.get(token, []) if until >= now]
        self.older[token] = kept
        return [state for state, _ in kept]


@dataclass
class ModelStore:
    stale_window: float
    seats: list[Seen]
    stored: dict[str, State] = field(default_factory=dict)
    lost: dict[str, State] | None = None  # the intent while the store is wiped and not restored
    marked: bool = False
    evicting: bool = False
    corrupt: dict[str, str] = field(default_factory=dict)  # token -> how it was hand-edited
    persisted: bool = False  # the server was saved before it went down: it comes back with data

    def intent(self, token: str) -> State:
        source = self.lost if self.lost is not None else self.stored
        return source.get(token)

    def _moved(self, token: str, before: State, delivered: Iterable[bool], now: float) -> None:
        if before == self.intent(token):
            return
        for seat, seen in zip(self.seats, delivered, strict=True):
            if seen:
                # The invalidation arrived: whatever this validator cached for the token is gone.
                seat.older[token] = []
            else:
                seat.older.setdefault(token, []).append((before, now + self.stale_window))

    def write(self, token: str, after: State, delivered: Iterable[bool], now: float) -> None:
        """An admin change that the store accepted."""
        before = self.intent(token)
        if after is None:
            self.stored.pop(token, None)
        else:
            self.stored[token] = after
        self._moved(token, before, delivered, now)

    def wipe(self) -> None:
        """FLUSHALL or a restart without data: the intent stays what it was."""
        if self.lost is None:
            self.lost = dict(self.stored)
        self.stored = {}
        self.marked = False
        self.corrupt = {}

    def wipe_some(self, tokens: Iterable[str]) -> None:
        """One Cluster primary flushed: its tokens' records gone, the intent unchanged (the
        store is unmarked there until `init`)."""
        if self.lost is None:
            self.lost = dict(self.stored)
        for token in tokens:
            self.stored.pop(token, None)
        self.corrupt = {}

    def mark(self, now: float) -> None:
        """`init` or the end of a restore: the store, as it is, becomes the intent."""
        if self.lost is not None:
            before = dict(self.lost)
            self.lost = None
            for token in set(before) | set(self.stored):
                self._moved(token, before.get(token), [False] * len(self.seats), now)
        self.marked = True

    def restore(self, records: Mapping[str, State], now: float) -> None:
        for token, record in records.items():
            before = self.intent(token)
            self.stored[token] = record
            self._moved(token, before, [False] * len(self.seats), now)
        self.mark(now)

    def may_allow(
        self, seat: int, token: str, front: Front, client_ip: str | None, now: float, now_ms: float
    ) -> bool:
        """Whether an "allowed" from validator `seat` is within what docs/behaviour.md and the README allow
        (`now`: on the caches' clock; `now_ms`: on the wall clock entries expire by). An entry
        that has lapsed matches in no state, older ones served during an outage included."""
        if not is_token(token) or front.ambiguous:
            return False
        seen = self.seats[seat]
        states = [self.intent(token), *seen.states(token, now)]
        return any(
            allows(s, front, client_ip, unknown_allowed=seen.unknown_allowed, now_ms=now_ms) for s in states
        )

    def explain(self, seat: int, token: str, now: float, now_ms: float | None = None) -> str:
        older = ", ".join(
            f"{'no record' if s is None else s.describe()} until +{until - now:.2f}s"
            for s, until in self.seats[seat].older.get(token, [])
        )
        intent = self.intent(token)
        return (
            f"intent {'no record' if intent is None else intent.describe()}; "
            f"older states this validator may serve: [{older}]; marked={self.marked}, "
            f"wiped={self.lost is not None}"
            + ("" if now_ms is None else f"; wall clock {clock_text(now_ms)}")
        )
