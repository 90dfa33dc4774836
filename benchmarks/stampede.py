"""stampede: 1,000 concurrent requests for one cold token.

With the validator's cache cleared before each run, 1,000 tasks call `await Validator.check()`
for the same stored token at once. Measured: the reads of the token made in Redis during the run
(from `INFO commandstats`: calls of HGETALL/HMGET/HGET, since every read of a token reads its
meta hash once, inside our Lua script or in the naive pipeline; must be 1 for ours) and the time
until all 1,000 have their decision. The note gives every command counted (scripts count their
inner commands too: one EVALSHA of read.lua is 4 commands).
Baseline in the same run: the naive per-request check (plain `redis.asyncio`, HGETALL + SMEMBERS
x2 per request; a `BlockingConnectionPool` of 100 connections, since redis-py's default pool
refuses the 101st), which reads once per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from benchmarks._baselines import RedisPyCheck
from benchmarks._data import SECRET, allowed_request, seed
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

NAME = "stampede"
REQUESTS = 1_000
OURS = "Validator.check()"
NAIVE = "naive (Redis per request)"
READS = frozenset(("hgetall", "hget", "hmget"))


async def _calls(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    # INFO and the invalidation connection's PINGs are not the run's work.
    changed = {k: n - before.get(k, 0) for k, n in after.items() if k not in ("info", "ping")}
    return {k: n for k, n in changed.items() if n}


async def _main(config: Config) -> list[Result]:
    runs = config.runs_or(7, 2)
    times: dict[str, list[float]] = {}
    reads: dict[str, list[float]] = {}
    commands: dict[str, list[dict[str, int]]] = {}
    with redis_server(config) as server:
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(server.url, secret=SECRET, key_prefix=prefix)
        await seed(admin, range(1))
        await admin.close()
        stats = aioredis.Redis.from_url(server.url, decode_responses=True)
        validator = Validator.from_url(server.url, secret=SECRET, key_prefix=prefix)
        naive = RedisPyCheck(server.url, validator.store, blocking=True)
        token, origin, client_ip = allowed_request(0, front_end=False)

        async def ours() -> bool:
            return (await validator.check(token, origin=origin, client_ip=client_ip)).allowed

        async def plain() -> bool:
            return await naive.check(token, origin, client_ip)

        checks: dict[str, Callable[[], Awaitable[bool]]] = {OURS: ours, NAIVE: plain}
        async with connected(validator, NAME):
            await ours()  # the store marker and the script, before timing
            await asyncio.gather(*(plain() for _ in range(REQUESTS)))  # the naive pool's connections
            for run in range(runs):
                progress(NAME, f"run {run + 1}/{runs}")
                for name in interleaved(list(checks), run):
                    validator.cache.clear()
                    before = await _calls(stats)
                    start = time.perf_counter_ns()
                    decisions = await asyncio.gather(*(checks[name]() for _ in range(REQUESTS)))
                    elapsed = time.perf_counter_ns() - start
                    if not all(decisions):
                        raise RuntimeError(f"stampede: {name} denied an allowed request")
                    delta = _delta(before, await _calls(stats))
                    reads.setdefault(name, []).append(sum(n for k, n in delta.items() if k in READS))
                    commands.setdefault(name, []).append(delta)
                    times.setdefault(name, []).append(elapsed / 1e6)
        await naive.close()
        await stats.aclose()
    return [
        Result(
            NAME,
            f"token reads in Redis: {NAIVE}",
            "reads",
            reads[NAIVE],
            higher_is_better=False,
            note=f"commands per run: {_commands(commands[NAIVE])}",
        ),
        Result(
            NAME,
            f"token reads in Redis: {OURS}",
            "reads",
            reads[OURS],
            higher_is_better=False,
            vs=(f"token reads in Redis: {NAIVE}",),
            note=f"{REQUESTS:,} concurrent checks of one cold token per run, must be 1 read; "
            f"commands per run: {_commands(commands[OURS])}",
        ),
        Result(NAME, f"time to serve all: {NAIVE}", "ms", times[NAIVE], higher_is_better=False),
        Result(
            NAME,
            f"time to serve all: {OURS}",
            "ms",
            times[OURS],
            higher_is_better=False,
            vs=(f"time to serve all: {NAIVE}",),
        ),
    ]


def _commands(runs: list[dict[str, int]]) -> str:
    distinct = {tuple(sorted(delta.items())) for delta in runs}
    return " / ".join(
        ", ".join(f"{k.upper()} {n:,}" for k, n in delta) or "none" for delta in sorted(distinct)
    )


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
