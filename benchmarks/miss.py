"""miss: cold checks (nothing cached) against a real redis-server, with 1 and 100 concurrent tasks.

With `--store redis+cluster://...` (or `redis+sentinel://...`) the same run goes to that Redis:
the library and redis-py (`RedisCluster`) through their cluster clients, the raw floor on one
connection per primary, each read sent to the primary of the token's slot.

Each run checks a set of stored tokens (5,000; 500 with --quick; 5 domains and 5 IPs each, half
the requests front-end, half back-end, all allowed) once each, with the validator's cache
cleared before the run, so every check reads Redis. Alternatives, in the same run and order
rotated per run:

- `Validator.check()` (default settings; it bounds concurrent loads at `max_concurrent_loads`=64);
- plain `redis.asyncio` (redis-py with hiredis, default connection pool), per check what a team
  would write: HGETALL + SMEMBERS x2 of the same keys in one pipeline, then the decision;
- the raw floor: the same three commands on one multiplexed connection (`benchmarks._rawclient`:
  asyncio.Protocol + hiredis.Reader, writes of a loop turn sent together).

All hash the token with the same keyed hash (`Store.token_hash`) and decide on what they read.
uvloop. Not pinned to CPUs: on the 2-vCPU VM of docs/benchmarks.md, putting client and server on
different CPUs made every round trip several times slower (cross-CPU wake-ups), so the scheduler
places them.
"""

from __future__ import annotations

from benchmarks._baselines import RawCheck, RedisPyCheck
from benchmarks._data import SECRET, allowed_request, seed
from benchmarks._drive import Check, drive
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
from benchmarks._targets import RawRouter
from validator import Admin, Validator

NAME = "miss"
OURS = "Validator.check()"
REDIS_PY = "redis-py pipeline"
RAW = "raw client (floor)"
CONCURRENCY = (1, 100)


async def _main(config: Config) -> list[Result]:
    n = config.pick(5_000, 500)
    runs = config.runs_or(7, 2)
    requests = [allowed_request(i, front_end=i % 2 == 0) for i in range(n)]
    samples: dict[str, list[float]] = {}
    with redis_server(config, multi_node=True) as server:
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(server.url, secret=SECRET, key_prefix=prefix)
        progress(NAME, f"seeding {n:,} tokens")
        await seed(admin, range(n))
        await admin.close()
        validator = Validator.from_url(server.url, secret=SECRET, key_prefix=prefix)
        redis_py = RedisPyCheck(server.url, validator.store)
        raw = RawCheck(await RawRouter.connect(server.url), validator.store)

        async def ours(token: str, origin: str | None, client_ip: str | None) -> bool:
            return (await validator.check(token, origin=origin, client_ip=client_ip)).allowed

        checks: dict[str, Check] = {OURS: ours, REDIS_PY: redis_py.check, RAW: raw.check}
        async with connected(validator, NAME):
            # Connections, scripts and the store marker are set up before timing.
            for check in checks.values():
                await drive(check, requests[:200], 100)
            for run in range(runs):
                progress(NAME, f"run {run + 1}/{runs}")
                for concurrency in CONCURRENCY:
                    for name in interleaved(list(checks), run):
                        validator.cache.clear()
                        loads = validator.cache.loads_started
                        elapsed = await drive(checks[name], requests, concurrency)
                        if name == OURS and validator.cache.loads_started - loads != n:
                            raise RuntimeError("miss: not every check read the store")
                        samples.setdefault(f"{concurrency} task(s): {name}", []).append(n / elapsed * 1e9)
        await redis_py.close()
        raw.router.close()
    results: list[Result] = []
    for concurrency in CONCURRENCY:
        label = f"{concurrency} task(s): "
        results += [
            Result(NAME, label + REDIS_PY, "checks/s", samples[label + REDIS_PY]),
            Result(NAME, label + RAW, "checks/s", samples[label + RAW], vs=(label + REDIS_PY,)),
            Result(NAME, label + OURS, "checks/s", samples[label + OURS], vs=(label + REDIS_PY, label + RAW)),
        ]
    where = "one server" if server.kind == "redis" else f"a {server.kind}"
    results[0].note = f"{n:,} cold tokens per run, each checked once, on {where}"
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
