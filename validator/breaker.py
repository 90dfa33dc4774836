"""A circuit breaker for store reads: while the store is failing, fail fast instead of waiting."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from validator.errors import ConfigurationError

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls fail at once until `reset_timeout` has passed
    HALF_OPEN = "half_open"  # one trial call is under way; the others fail at once


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; after `reset_timeout` lets one
    trial call through, and closes again when it succeeds.

    Every call that `allow()` let through must end in `success()`, `failure()` or, when it ended
    without an outcome (cancelled), `release()`. A trial that reports nothing within
    `reset_timeout` is taken for lost, and the next call becomes the trial: a breaker never
    stays half-open.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0:
            raise ConfigurationError("failure_threshold must be >= 1 and reset_timeout positive")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._trial_at = 0.0
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        """Whether a call may go to the store now (False: fail fast)."""
        if self.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        since = now - (self._opened_at if self.state is BreakerState.OPEN else self._trial_at)
        if since >= self.reset_timeout:
            self.state = BreakerState.HALF_OPEN
            self._trial_at = now
            return True
        return False

    def blocked(self) -> bool:
        """Whether a call would be refused now, without changing state (see `allow`)."""
        if self.state is BreakerState.CLOSED:
            return False
        since = self._opened_at if self.state is BreakerState.OPEN else self._trial_at
        return self._clock() - since < self.reset_timeout

    def success(self) -> None:
        """A call got an answer from the store."""
        self._failures = 0
        self.state = BreakerState.CLOSED

    def failure(self) -> None:
        """A call failed (the store did not answer, or not in time)."""
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """A call ended without an outcome (cancelled): if it was the trial, the next call may
        be the trial at once; otherwise nothing changes."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock() - self.reset_timeout

    def retry_now(self) -> None:
        """The store may answer again (a failover named a new node): if open, the next call is a
        trial at once rather than after the rest of `reset_timeout`."""
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock() - self.reset_timeout

    def trip(self) -> None:
        """Open now (e.g. the invalidation connection found the store gone)."""
        self._failures = self.failure_threshold
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
