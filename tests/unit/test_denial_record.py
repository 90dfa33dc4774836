"""`DenialLog.record` on the request path: what a full queue costs, and what the log lines say.

No store is written here (the writer is never started): a full queue and the rate-limited log
lines are request-path matters, `tests/integration/test_denials.py` covers the writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

import pytest

from validator.denials import DenialLog
from validator.model import Reason, Source, decision
from validator.rules.decide import TokenRules
from validator.store import Store

pytestmark = [pytest.mark.promise("P-DENIAL-LOG-OFF-PATH")]

DENIED = decision(False, Reason.IP_NOT_LISTED, Source.BACK_END)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "validator"]


def cached_entry(token_hash: str) -> TokenRules:
    entry = TokenRules(None)
    entry.token_hash = token_hash  # as `Cache._put` sets it
    return entry


@pytest.mark.timeout(10)
async def test_drops_are_counted_and_told_in_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="validator")
    log = DenialLog(cast(Store, None), queue_size=2, log_rate=1.0)  # a burst of 2 lines
    for n in range(10):
        log.record(cached_entry(f"{n:064x}"), DENIED, None, f"198.51.100.{n}")
    assert (len(log), log.dropped) == (2, 8)
    assert len(lines(caplog)) == 2  # the burst; the other 8 were not logged
    # The burst is spent: a dropped denial no longer reads the clock, until the timer says a
    # line is due again.
    assert log._line_due is False
    assert log.dropping is True  # the request path now only counts (`Validator.check_cached`)
    assert log._due_timer is not None
    # Due when the rate limit allows the next line: a second at 1 line/s (the loop's clock is
    # `time.monotonic`, as the limit's).
    due_in = log._due_timer.when() - asyncio.get_running_loop().time()
    assert 0.0 < due_in <= 1.0
    log._log_limit.allowed_from = time.monotonic()  # as if the second had passed
    log._due_timer._run()  # what the loop does when the timer is due
    assert (log._line_due, log.dropping) == (True, False)
    log.record(cached_entry("f" * 64), DENIED, None, "198.51.100.99")
    assert log.dropped == 9
    last = lines(caplog)[-1]
    assert "198.51.100.99" in last
    assert last.endswith("(8 more not logged)")  # every drop since the last line, counted
    assert log._line_due is False  # the burst is spent again: the next drop sets `dropping`
    log.record(cached_entry("e" * 64), DENIED, None, "198.51.100.98")
    assert (log.dropped, log.dropping, len(lines(caplog))) == (10, True, 3)
    log._take_batch()  # the writer makes room
    assert log.dropping is False
    await log.stop()
    assert log._due_timer is None


@pytest.mark.timeout(10)
def test_without_a_running_loop_each_drop_reads_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="validator")
    log = DenialLog(cast(Store, None), queue_size=1, log_rate=1.0)
    for n in range(5):
        log.record(f"{n:064x}", DENIED, None, "198.51.100.1")
    assert (len(log), log.dropped) == (1, 4)
    assert log._line_due is True  # no loop to fire a timer: nothing is skipped on its word
    assert len(lines(caplog)) == 2
    log._log_limit.allowed_from = time.monotonic()
    log.record("e" * 64, DENIED, None, "198.51.100.2")
    assert lines(caplog)[-1].endswith("(3 more not logged)")


@pytest.mark.timeout(10)
def test_queued_entries_are_written_under_their_token_hash() -> None:
    log = DenialLog(cast(Store, None), queue_size=1000)
    hashes = [f"{n:064x}" for n in range(3)]
    for token_hash in hashes:
        log.record(cached_entry(token_hash), DENIED, None, "198.51.100.1")
    log.record(hashes[0], DENIED, None, "198.51.100.1")  # a hash, as the miss path passes it
    stored, unknown, count = log._take_batch()
    assert count == 4
    assert unknown == []
    assert [entry[0] for entry in stored] == [*hashes, hashes[0]]
    assert all(isinstance(entry[0], str) for entry in stored)
