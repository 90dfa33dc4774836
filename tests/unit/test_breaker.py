"""The circuit breaker: opens on consecutive failures, one trial after the reset timeout."""

from __future__ import annotations

import pytest

from validator.breaker import BreakerState, CircuitBreaker
from validator.errors import ConfigurationError

pytestmark = [pytest.mark.promise("P-BREAKER")]


def state(breaker: CircuitBreaker) -> BreakerState:
    # Read through a call: mypy would narrow `breaker.state` across the calls that change it.
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between resets the count
    breaker.failure()
    breaker.failure()
    assert state(breaker) is BreakerState.CLOSED
    assert not breaker.blocked()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.blocked()
    assert not breaker.allow()


def test_one_trial_after_reset_timeout_then_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert not breaker.blocked()  # a trial may go now; blocked() does not take it
    assert state(breaker) is BreakerState.OPEN
    assert breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.blocked()
    assert not breaker.allow()  # only one trial at a time
    breaker.success()
    assert state(breaker) is BreakerState.CLOSED


def test_failed_trial_opens_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=1.0, clock=clock)
    breaker.trip()
    clock.now = 2.0
    assert breaker.allow()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN
    clock.now = 2.5
    assert breaker.blocked()


@pytest.mark.parametrize(("threshold", "reset"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_bad_settings(threshold: int, reset: float) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(failure_threshold=threshold, reset_timeout=reset)


def test_a_released_trial_lets_the_next_call_be_the_trial_at_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.release()  # the trial was cancelled: no outcome
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.blocked()
    assert breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN


def test_release_of_an_ordinary_call_changes_nothing() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, clock=Clock())
    breaker.failure()
    for _ in range(5):
        assert breaker.allow()
        breaker.release()  # a cancelled call is not a failure of the store
    assert state(breaker) is BreakerState.CLOSED
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN  # the one failure before still counts


def test_a_trial_that_never_reports_is_taken_for_lost_after_reset_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.trip()
    clock.now = 1.0
    assert breaker.allow()  # the trial goes, and is never heard of again
    clock.now = 1.9
    assert breaker.blocked()
    assert not breaker.allow()
    clock.now = 2.0
    assert not breaker.blocked()
    assert breaker.allow()  # a new trial
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.success()
    assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("success", BreakerState.CLOSED),
        ("failure", BreakerState.OPEN),
        ("release", BreakerState.OPEN),
    ],
)
def test_every_outcome_of_a_trial_leaves_half_open(outcome: str, expected: BreakerState) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, clock=clock)
    breaker.trip()
    clock.now = 1.0
    assert breaker.allow()
    getattr(breaker, outcome)()
    assert state(breaker) is expected
