"""denials: the background CPU each denial costs the denial-log writer, under a flood.

A flood of denied requests is what an attack looks like, and each denial is recorded on the
request path (a queue append, `DenialLog.record`) and written later by a background task. This
measures the writer's CPU per denial, which no other benchmark sees.

Floods, each paced at 100,000 denials a second (ticks of 5 ms: 500 `record()` calls, then the
event loop is left to the writer until the next tick), 100,000 denials a run (10,000 with
--quick), on a real redis-server:

- one token: a stored token denied again and again (back end, one client address);
- distinct tokens: each denial a different invented token (the unknown-token log), half front
  end from ~50 Origins, half back end from ~50 client addresses (the realistic data set);
- distinct stored tokens: each denial one of 5,000 stored tokens (1,000 with --quick) drawn at
  random, back end from ~50 unlisted addresses: per token and batch a stream entry, a PEXPIRE and
  a call of the per-token summary that `validator-admin suggest` reads (`summary.lua`).

Figure: process CPU time (`time.process_time_ns`) from the first tick until the writer has
written everything (`flush()`), minus the CPU of the `record()` calls themselves (timed around
each tick's calls), divided by the denials recorded in the run. Nothing else runs in the
process; redis-server's CPU is its own process's and not counted. Baselines in the same run,
order rotated per run:

- "writer before": the writer of 0.x on the same records: each denial described (`origin_of`)
  and written with redis-py, one XADD per denial and one PEXPIRE per stream in one pipeline;
- "the check itself": the CPU of one `check_cached()` of a denied cached token (back end,
  unlisted address), record() included: the request-path cost the background cost is set against.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from benchmarks._data import SECRET, seed, token
from benchmarks._harness import (
    Config,
    Result,
    connected,
    interleaved,
    module_main,
    progress,
    redis_server,
    run_async,
    unique_prefix,
)
from validator import Admin, Validator
from validator.model import Decision, Reason, Source, decision
from validator.rules.request import origin_of, request_host
from validator.store import Store, fingerprint

NAME = "denials"
RATE = 100_000  # denials a second
TICK = 0.005  # seconds: RATE * TICK = 500 record() calls a tick
OURS = "DenialLog writer"
BEFORE = "writer before (redis-py XADD pipeline)"
CHECK = "the check itself: check_cached() of a denial"
FLOODS = ("one token", "distinct tokens", "distinct stored tokens")
STORED = 5_000  # stored tokens of the "distinct stored tokens" flood (1,000 with --quick)

# One denial as the request path queues it: (token hash, decision, Origin or Referer, client IP).
Denial = tuple[str, Decision, str | None, str | None]
_Queued = tuple[float, str, Decision, str | None, str | None]


def _floods(store: Store, stored_hash: str, n: int, stored: int) -> dict[str, list[Denial]]:
    rng = random.Random(14)
    back_end = decision(False, Reason.IP_NOT_LISTED, Source.BACK_END)
    unknown_front = decision(False, Reason.UNKNOWN_TOKEN, Source.FRONT_END)
    unknown_back = decision(False, Reason.UNKNOWN_TOKEN, Source.BACK_END)
    origins = [f"https://app{k}.customer{k * 7}.example.net" for k in range(50)]
    addresses = [f"198.51.100.{k + 10}" for k in range(50)]
    distinct: list[Denial] = []
    for i in range(n):
        token_hash = store.token_hash(f"tok_{rng.randbytes(16).hex()}")
        if i % 2:
            distinct.append((token_hash, unknown_front, rng.choice(origins), None))
        else:
            distinct.append((token_hash, unknown_back, None, rng.choice(addresses)))
    # Stored tokens in random order, each denied from one of ~50 unlisted addresses: a stream, a
    # summary (`summary.lua`) and a PEXPIRE per token and batch.
    hashes = [store.token_hash(token(i)) for i in range(stored)]
    many: list[Denial] = [(rng.choice(hashes), back_end, None, rng.choice(addresses)) for _ in range(n)]
    return {
        "one token": [(stored_hash, back_end, None, "203.0.113.99")] * n,
        "distinct tokens": distinct,
        "distinct stored tokens": many,
    }


class _WriterBefore:
    """The denial writer of 0.x, kept here as the baseline: the same queue and record(), then per
    batch of 500 each denial described and written by redis-py (XADD each, PEXPIRE per stream)."""

    def __init__(
        self, store: Store, url: str, *, stream_length: int = 1000, unknown_length: int = 1000
    ) -> None:
        self.store = store
        self.client = aioredis.Redis.from_url(url)
        self.stream_length = stream_length
        self.shard_length = -(-unknown_length // len(store.UNKNOWN_SHARD_TAGS))
        self.queue: collections.deque[_Queued] = collections.deque()
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.recorded = 0
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None

    def record(self, token_hash: str, result: Decision, url: str | None, client_ip: str | None) -> None:
        if len(self.queue) >= 10_000:
            self.dropped += 1
            return
        self.idle.clear()
        self.queue.append((time.time(), token_hash, result, url, client_ip))
        self.wakeup.set()

    async def flush(self) -> None:
        await self.idle.wait()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                count = min(len(self.queue), 500)
                await self._write([self._described(*self.queue.popleft()) for _ in range(count)])
                self.recorded += count
            self.idle.set()

    @staticmethod
    def _described(
        at: float, token_hash: str, result: Decision, url: str | None, client_ip: str | None
    ) -> tuple[str, dict[Any, Any]]:
        origin = ""
        if result.source is Source.FRONT_END:
            seen = (request_host(url) if url else None) or "-"
            parts = origin_of(url) if url else None
            if parts is not None:
                origin = f"{parts[0]}://{parts[1]}" + (f":{parts[2]}" if parts[2] is not None else "")
        else:
            seen = client_ip or "-"
        source = result.source.value if result.source is not None else "-"
        fields = {"at": int(at * 1000), "source": source, "seen": seen[:256], "reason": result.reason.value}
        fields |= {"mode": "enforce", "origin": origin[:300]}
        return token_hash, fields

    async def _write(self, batch: Sequence[tuple[str, dict[Any, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        written: dict[str, None] = {}
        for token_hash, fields in batch:
            if fields["reason"] == Reason.UNKNOWN_TOKEN.value:
                key = self.store.unknown_denials_key(token_hash)
                named = {"token": fingerprint(token_hash), **fields}
                pipe.xadd(key, named, maxlen=self.shard_length, approximate=True)
            else:
                key = self.store.denials_key(token_hash)
                pipe.xadd(key, fields, maxlen=self.stream_length, approximate=True)
            written[key] = None
        for key in written:
            pipe.pexpire(key, 7 * 24 * 3600 * 1000)
        await pipe.execute()


async def _flood(
    record: Callable[[str, Decision, str | None, str | None], None],
    flush: Callable[[], Any],
    counts: Callable[[], tuple[int, int]],
    denials: Sequence[Denial],
) -> float:
    """Paced at RATE: the writer's CPU per recorded denial, in µs (see the module docstring)."""
    per_tick = int(RATE * TICK)
    recorded_before, dropped_before = counts()
    record_cpu = 0
    started_cpu = time.process_time_ns()
    started = time.monotonic()
    for tick, start in enumerate(range(0, len(denials), per_tick)):
        cpu = time.process_time_ns()
        for token_hash, result, url, client_ip in denials[start : start + per_tick]:
            record(token_hash, result, url, client_ip)
        record_cpu += time.process_time_ns() - cpu
        await asyncio.sleep(max(0.0, started + (tick + 1) * TICK - time.monotonic()))
    await asyncio.wait_for(flush(), 120)
    total_cpu = time.process_time_ns() - started_cpu
    recorded_after, dropped_after = counts()
    recorded = recorded_after - recorded_before
    if dropped_after - dropped_before:
        progress(NAME, f"WARNING: {dropped_after - dropped_before} denials dropped (the writer fell behind)")
    return (total_cpu - record_cpu) / max(1, recorded) / 1000


def _check_cpu(validator: Validator, stored: str, checks: int) -> float:
    """CPU µs of one check_cached() of a denied cached token (record() included, queue not full)."""
    check = validator.check_cached
    started = time.process_time_ns()
    for _ in range(checks):
        check(stored, client_ip="203.0.113.99")
    return (time.process_time_ns() - started) / checks / 1000


async def _main(config: Config) -> list[Result]:
    # The rate-limited denial lines are part of record() (the request path), not of the writer;
    # they would only clutter the output here.
    logging.getLogger("validator").addHandler(logging.NullHandler())
    logging.getLogger("validator").propagate = False
    n = config.pick(100_000, 10_000)
    stored_tokens = config.pick(STORED, 1_000)
    runs = config.runs_or(5, 1)
    samples: dict[str, list[float]] = {}
    with redis_server(config) as server:
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(server.url, secret=SECRET, key_prefix=prefix)
        await seed(admin, range(stored_tokens))
        await admin.set_ips(token(0), ["203.0.113.7"])
        await admin.close()
        validator = Validator.from_url(server.url, secret=SECRET, key_prefix=prefix, unknown_token="deny")
        log = validator.denial_log
        assert log is not None
        before = _WriterBefore(validator.store, server.url)
        async with connected(validator, NAME):
            assert not (await validator.check(token(0), client_ip="203.0.113.99")).allowed
            stored = validator.store.token_hash(token(0))
            floods = _floods(validator.store, stored, n, stored_tokens)
            before.start()
            writers: dict[str, tuple[Any, Any, Callable[[], tuple[int, int]]]] = {
                OURS: (log.record, log.flush, lambda: (log.recorded, log.dropped)),
                BEFORE: (before.record, before.flush, lambda: (before.recorded, before.dropped)),
            }
            # Warm up: connections, the unknown-token shards, code paths.
            for record, flush, counts in writers.values():
                await _flood(record, flush, counts, floods["distinct tokens"][:2000])
                await _flood(record, flush, counts, floods["distinct stored tokens"][:2000])
            for run in range(runs):
                progress(NAME, f"run {run + 1}/{runs}")
                for name in interleaved([OURS, BEFORE, CHECK], run):
                    if name == CHECK:
                        cpu = 0.0
                        for _ in range(10):  # in chunks the queue holds, drained between them
                            cpu += _check_cpu(validator, token(0), 1000) / 10
                            await log.flush()
                        samples.setdefault(CHECK, []).append(cpu)
                        continue
                    for flood in FLOODS:
                        figure = await _flood(*writers[name], floods[flood])
                        samples.setdefault(f"{flood}: {name}", []).append(figure)
        await before.close()
    results = [Result(NAME, CHECK, "µs CPU/denial", samples[CHECK], higher_is_better=False)]
    for flood in FLOODS:
        results += [
            Result(NAME, f"{flood}: {BEFORE}", "µs CPU/denial", samples[f"{flood}: {BEFORE}"], False),
            Result(
                NAME,
                f"{flood}: {OURS}",
                "µs CPU/denial",
                samples[f"{flood}: {OURS}"],
                higher_is_better=False,
                vs=(f"{flood}: {BEFORE}", CHECK),
            ),
        ]
    results[0].note = f"{n:,} denials per flood and run, paced at {RATE:,}/s; writer CPU per denial recorded"
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
