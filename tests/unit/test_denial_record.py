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
from validator.store.denial_streams import unknown_shard, unknown_shard_length

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


@pytest.mark.timeout(10)
def test_a_flood_batch_keeps_only_the_unknown_entries_the_store_would_write() -> None:
    """A flood's batch is merged newest first: an unknown token's denial gets an entry only while
    its shard of the unknown-token log has room (the store writes no more than the newest
    `unknown_shard_length` per shard and batch); stored tokens' entries all stay, an older
    repeat still counts in its request's entry, and entries come in the order of their last
    denial."""
    log = DenialLog(cast(Store, None), queue_size=10_000, unknown_length=160)
    unknown = decision(False, Reason.UNKNOWN_TOKEN, Source.BACK_END)
    repeated = f"{'r' * 63}0"
    log.record(repeated, unknown, None, "198.51.100.9")  # the oldest denial of the batch
    invented = [f"{n:064x}" for n in range(3000)]
    stored_hashes = [f"{'s' * 60}{n:04d}" for n in range(10)]
    for n, token_hash in enumerate(invented):
        log.record(token_hash, unknown, None, "198.51.100.1")
        if n % 300 == 0:
            log.record(stored_hashes[n // 300], DENIED, None, "198.51.100.2")
    log.record(repeated, unknown, None, "198.51.100.9")  # and the newest
    stored, entries, count = log._take_batch()
    assert count == 3000 + 10 + 2
    assert [entry[0] for entry in stored] == stored_hashes
    shard_length = unknown_shard_length(160)
    by_shard: dict[int, list[str]] = {}
    for entry in entries:
        by_shard.setdefault(unknown_shard(entry[0]), []).append(entry[0])
    assert all(len(kept) <= shard_length for kept in by_shard.values())
    # Per shard, the newest of the invented tokens, as the store would have kept them.
    newest: dict[int, list[str]] = {}
    for token_hash in reversed([repeated, *invented, repeated]):
        shard = newest.setdefault(unknown_shard(token_hash), [])
        if len(shard) < shard_length and token_hash not in shard:
            shard.append(token_hash)
    assert {shard: sorted(kept) for shard, kept in by_shard.items()} == {
        shard: sorted(kept) for shard, kept in newest.items()
    }
    last = entries[-1]
    assert last[0] == repeated and last[2] == 2 and last[3] < last[1]  # count 2, first before at
    times = [entry[1] for entry in entries]
    assert times == sorted(times)
