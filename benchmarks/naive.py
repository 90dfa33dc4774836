"""naive: our cached validator against a straightforward per-request implementation, by hit mix.

The naive implementation keeps no cache: every request reads the token's keys from Redis (plain
`redis.asyncio`, HGETALL + SMEMBERS x2 in a pipeline, as in `miss`) and decides. Ours is
`await Validator.check()` with default settings. Both serve the same request streams with 100
concurrent tasks (a busy server's in-flight requests) against one real redis-server:

- 90%, 99% and 100% of requests name one of the hot tokens (10,000; 1,000 with --quick), cached
  before timing; the rest name a token stored in Redis but never seen before (a cache miss);
- each stream holds 10,000 requests (1,000 with --quick), all allowed, alternating front-end
  (listed Origin) and back-end (listed client IP); hot tokens are drawn at random.

Ours must read Redis exactly once per miss; the benchmark checks that. Figures are requests/s.
"""

from __future__ import annotations

import random

from benchmarks._baselines import RedisPyCheck
from benchmarks._data import SECRET, Request, allowed_request, seed
from benchmarks._drive import drive
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

NAME = "naive"
MIXES = (0.90, 0.99, 1.00)
CONCURRENCY = 100
OURS = "Validator.check()"
NAIVE = "naive (Redis per request)"


def _stream(
    rng: random.Random, hot: int, length: int, hit: float, cold: list[int]
) -> tuple[list[Request], int]:
    """`length` requests, `hit` of them for hot tokens (0..hot-1), the rest for tokens taken from `cold`."""
    misses = round(length * (1 - hit))
    miss_at = set(rng.sample(range(length), misses))
    requests = [
        allowed_request(cold.pop() if j in miss_at else rng.randrange(hot), front_end=j % 2 == 0)
        for j in range(length)
    ]
    return requests, misses


async def _main(config: Config) -> list[Result]:
    hot = config.pick(10_000, 1_000)
    length = config.pick(10_000, 1_000)
    runs = config.runs_or(5, 2)
    rng = random.Random(90)
    misses_needed = sum(round(length * (1 - hit)) for hit in MIXES) * runs * 2
    cold = list(range(hot, hot + misses_needed))
    rng.shuffle(cold)
    samples: dict[str, list[float]] = {}
    with redis_server(config, multi_node=True) as server:
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(server.url, secret=SECRET, key_prefix=prefix)
        progress(NAME, f"seeding {hot + len(cold):,} tokens")
        await seed(admin, range(hot + len(cold)))
        await admin.close()
        validator = Validator.from_url(server.url, secret=SECRET, key_prefix=prefix)
        naive = RedisPyCheck(server.url, validator.store)

        async def ours(token: str, origin: str | None, client_ip: str | None) -> bool:
            return (await validator.check(token, origin=origin, client_ip=client_ip)).allowed

        async with connected(validator, NAME):
            progress(NAME, f"warming {hot:,} hot tokens")
            await drive(ours, [allowed_request(i, True) for i in range(hot)], CONCURRENCY)
            await drive(naive.check, [allowed_request(i, True) for i in range(200)], CONCURRENCY)
            for run in range(runs):
                progress(NAME, f"run {run + 1}/{runs}")
                for hit in MIXES:
                    for name in interleaved([NAIVE, OURS], run):
                        # Each alternative gets a fresh stream: a miss of ours must be a token never seen.
                        requests, misses = _stream(rng, hot, length, hit, cold)
                        loads = validator.cache.loads_started
                        elapsed = await drive(ours if name == OURS else naive.check, requests, CONCURRENCY)
                        if name == OURS and validator.cache.loads_started - loads != misses:
                            raise RuntimeError(
                                f"naive: {validator.cache.loads_started - loads} reads for {misses} misses "
                                "(hot tokens expired from the cache?)"
                            )
                        samples.setdefault(f"{hit:.0%} hits: {name}", []).append(length / elapsed * 1e9)
        await naive.close()
    results: list[Result] = []
    for hit in MIXES:
        label = f"{hit:.0%} hits: "
        results += [
            Result(NAME, label + NAIVE, "requests/s", samples[label + NAIVE]),
            Result(NAME, label + OURS, "requests/s", samples[label + OURS], vs=(label + NAIVE,)),
        ]
    note = f"{hot:,} hot tokens, streams of {length:,} requests, {CONCURRENCY} concurrent tasks"
    results[0].note = note + ", one redis-server"
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
