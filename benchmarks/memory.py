"""memory: bytes per cached token in a validator process, and bytes per token in Redis.

Every token has both restrictions on, 5 domains and 5 IPs (as in `hotpath`).

- Cache: tracemalloc's traced memory before and after 10,000 tokens (2,000 with --quick) are
  loaded into a connected validator by `check()` from a real redis-server, after `gc.collect()`,
  divided by the number of tokens: everything the cache keeps per token (token string, entry,
  compiled rules, LRU and index slots). Connections are warmed up before tracing starts. Baseline
  in the same run: the least a Python cache can keep, `{token: (frozenset(domains),
  frozenset(ips))}` with strings of its own; and the same with tuples, the least for 5 entries.
- Redis: `MEMORY USAGE key SAMPLES 0` summed over a token's keys, for 1,000 stored tokens (200
  with --quick); its data keys (meta hash, domain set, IP set) and, separately, with its change
  history list. Baseline: one STRING key per token holding the record as compact JSON. Keys use
  the default prefix `tav:` unless --store is given. Spread: over the tokens sampled.
"""

from __future__ import annotations

import gc
import tracemalloc

import msgspec
import redis.asyncio as aioredis

from benchmarks._data import SECRET, allowed_request, domains, ips, record, seed, token
from benchmarks._drive import drive
from benchmarks._harness import (
    Config,
    Result,
    connected,
    module_main,
    progress,
    redis_server,
    run_async,
    unique_prefix,
)
from validator import Admin, Validator

NAME = "memory"
OURS = "cached token: Validator cache"
FLOOR = "cached token: dict of frozensets (floor)"
TUPLES = "cached token: dict of tuples"
REDIS_DATA = "Redis per token: meta + domains + IPs"
REDIS_ALL = "Redis per token: with change history"
REDIS_FLOOR = "Redis per token: one JSON string (floor)"


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _cache_bytes(validator: Validator, n: int) -> float:
    validator.cache.clear()

    async def check(token_: str, origin: str | None, client_ip: str | None) -> bool:
        return (await validator.check(token_, origin=origin, client_ip=client_ip)).allowed

    before = _traced()
    # The requests (and their token strings) are made while tracing: what the cache keeps of
    # them counts, the rest is freed with the list.
    requests = [allowed_request(i, front_end=False) for i in range(n)]
    await drive(check, requests, 64)
    del requests
    after = _traced()
    if len(validator.cache) != n:
        raise RuntimeError(f"memory: {len(validator.cache)} tokens cached, expected {n}")
    return (after - before) / n


def _floor_bytes(n: int, container: type[frozenset[str]] | type[tuple[str, ...]]) -> float:
    before = _traced()
    table = {token(i): (container(domains(i)), container(ips(i))) for i in range(n)}
    after = _traced()
    del table
    return (after - before) / n


async def _main(config: Config) -> list[Result]:
    n = config.pick(10_000, 2_000)
    sampled = config.pick(1_000, 200)
    runs = config.runs_or(5, 2)
    samples: dict[str, list[float]] = {}
    with redis_server(config) as server:
        prefix = unique_prefix(NAME) if config.store else "tav:"
        admin = Admin.from_url(server.url, secret=SECRET, key_prefix=prefix)
        progress(NAME, f"seeding {n:,} tokens")
        await seed(admin, range(n))
        await seed(admin, range(200), kind="warm")
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        encoding = ""
        for i in range(sampled):
            meta, domain_key, ip_key = admin.store.keys(admin.token_hash(token(i)))
            history = admin.store.history_key(admin.token_hash(token(i)))
            sizes = [
                await client.memory_usage(key, samples=0) or 0 for key in (meta, domain_key, ip_key, history)
            ]
            samples.setdefault(REDIS_DATA, []).append(sum(sizes[:3]))
            samples.setdefault(REDIS_ALL, []).append(sum(sizes))
            floor_key = f"{prefix}{{{admin.token_hash(token(i))}}}:r"
            await client.set(floor_key, msgspec.json.encode(record(i)))
            samples.setdefault(REDIS_FLOOR, []).append(await client.memory_usage(floor_key, samples=0) or 0)
            await client.delete(floor_key)
            if not encoding:
                meta_encoding = await client.object("encoding", meta)
                encoding = f"meta {meta_encoding}, sets {await client.object('encoding', ip_key)}"
        await client.aclose()
        await admin.close()
        validator = Validator.from_url(server.url, secret=SECRET, key_prefix=prefix, cache_size=n)
        async with connected(validator, NAME):

            async def warm(token_: str, origin: str | None, client_ip: str | None) -> bool:
                return (await validator.check(token_, origin=origin, client_ip=client_ip)).allowed

            await drive(warm, [allowed_request(i, False, kind="warm") for i in range(200)], 64)
            tracemalloc.start()
            try:
                for run in range(runs):
                    progress(NAME, f"run {run + 1}/{runs}: {n:,} tokens")
                    samples.setdefault(OURS, []).append(await _cache_bytes(validator, n))
                    samples.setdefault(FLOOR, []).append(_floor_bytes(n, frozenset))
                    samples.setdefault(TUPLES, []).append(_floor_bytes(n, tuple))
            finally:
                tracemalloc.stop()
    return [
        Result(NAME, FLOOR, "bytes/token", samples[FLOOR], higher_is_better=False),
        Result(NAME, TUPLES, "bytes/token", samples[TUPLES], higher_is_better=False, vs=(FLOOR,)),
        Result(
            NAME,
            OURS,
            "bytes/token",
            samples[OURS],
            higher_is_better=False,
            vs=(FLOOR,),
            note=f"{n:,} tokens (5 domains + 5 IPs each) per run, tracemalloc after gc.collect()",
        ),
        Result(NAME, REDIS_FLOOR, "bytes/token", samples[REDIS_FLOOR], higher_is_better=False),
        Result(
            NAME,
            REDIS_DATA,
            "bytes/token",
            samples[REDIS_DATA],
            higher_is_better=False,
            vs=(REDIS_FLOOR,),
            note=f"MEMORY USAGE SAMPLES 0 over {sampled:,} tokens ('runs' = tokens); encodings: {encoding}",
        ),
        Result(NAME, REDIS_ALL, "bytes/token", samples[REDIS_ALL], higher_is_better=False, vs=(REDIS_FLOOR,)),
    ]


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
