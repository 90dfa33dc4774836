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
  asyncio.Protocol + hiredis.Reader, writes of a loop turn sent together);
- the peer, the afternoon implementation a team would write instead of the library
  (`benchmarks._baselines.PeerCheck`): redis-py's pipeline as above, each record's sets then kept
  in a `cachetools.TTLCache(100_000, ttl=5)` (cleared before each run, as the validator's cache).

All hash the token with the same keyed hash (`Store.token_hash`) and decide on what they read.

Redis CPU per read, per alternative and concurrency: the `INFO commandstats` usec of the commands
each sends, summed over the primaries, per check (the validator: MULTI + EXEC, whose usec
includes the commands it runs, + any EVALSHA; the others: HGETALL + SMEMBERS), and the
redis-server process's CPU (`used_cpu_user` + `used_cpu_sys`, so with the network I/O) per check.
Redis CPU is what every validator process of a fleet shares.
uvloop. Not pinned to CPUs: on the 2-vCPU VM of docs/benchmarks.md, putting client and server on
different CPUs made every round trip several times slower (cross-CPU wake-ups), so the scheduler
places them.
"""

from __future__ import annotations

from benchmarks._baselines import PeerCheck, RawCheck, RedisPyCheck
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
from benchmarks._targets import RawRouter, _sync_primaries
from validator import Admin, Validator

NAME = "miss"
OURS = "Validator.check()"
REDIS_PY = "redis-py pipeline"
RAW = "raw client (floor)"
PEER = "peer: redis-py + TTLCache"
CONCURRENCY = (1, 100)
# The commands whose commandstats usec make up each alternative's reads (see the docstring).
READ_COMMANDS = {
    OURS: ("multi", "exec", "evalsha"),
    REDIS_PY: ("hgetall", "smembers"),
    PEER: ("hgetall", "smembers"),
    RAW: ("hgetall", "smembers"),
}


def _redis_cpu(url: str, commands: tuple[str, ...]) -> tuple[float, float]:
    """(usec of `commands` in commandstats, redis-server CPU seconds) summed over the primaries."""
    usec = cpu = 0.0
    with _sync_primaries(url) as primaries:
        for client in primaries:
            stats = client.info("commandstats")
            usec += sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0)) for name in commands)
            used = client.info("cpu")
            cpu += float(used["used_cpu_user"]) + float(used["used_cpu_sys"])
    return usec, cpu


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
        peer = PeerCheck(server.url, validator.store, maxsize=100_000, ttl=5.0)

        async def ours(token: str, origin: str | None, client_ip: str | None) -> bool:
            return (await validator.check(token, origin=origin, client_ip=client_ip)).allowed

        checks: dict[str, Check] = {OURS: ours, REDIS_PY: redis_py.check, RAW: raw.check, PEER: peer.check}
        async with connected(validator, NAME):
            # Connections, scripts and the store marker are set up before timing.
            for check in checks.values():
                await drive(check, requests[:200], 100)
            for run in range(runs):
                progress(NAME, f"run {run + 1}/{runs}")
                for concurrency in CONCURRENCY:
                    for name in interleaved(list(checks), run):
                        validator.cache.clear()
                        peer.cache.clear()
                        loads = validator.cache.loads_started
                        usec, cpu = _redis_cpu(server.url, READ_COMMANDS[name])
                        elapsed = await drive(checks[name], requests, concurrency)
                        usec_after, cpu_after = _redis_cpu(server.url, READ_COMMANDS[name])
                        if name == OURS and validator.cache.loads_started - loads != n:
                            raise RuntimeError("miss: not every check read the store")
                        case = f"{concurrency} task(s): {name}"
                        samples.setdefault(case, []).append(n / elapsed * 1e9)
                        samples.setdefault(f"{case}: Redis commands", []).append((usec_after - usec) / n)
                        samples.setdefault(f"{case}: redis-server CPU", []).append(
                            (cpu_after - cpu) / n * 1e6
                        )
        await redis_py.close()
        await peer.close()
        raw.router.close()
    results: list[Result] = []
    for concurrency in CONCURRENCY:
        label = f"{concurrency} task(s): "
        results += [
            Result(NAME, label + REDIS_PY, "checks/s", samples[label + REDIS_PY]),
            Result(NAME, label + RAW, "checks/s", samples[label + RAW], vs=(label + REDIS_PY,)),
            Result(NAME, label + PEER, "checks/s", samples[label + PEER], vs=(label + RAW,)),
            Result(
                NAME,
                label + OURS,
                "checks/s",
                samples[label + OURS],
                vs=(label + REDIS_PY, label + RAW, label + PEER),
            ),
        ]
        for row, unit in (
            (": Redis commands", "µs commandstats/read"),
            (": redis-server CPU", "µs CPU/read"),
        ):
            results += [
                Result(NAME, label + RAW + row, unit, samples[label + RAW + row], higher_is_better=False),
                Result(
                    NAME,
                    label + OURS + row,
                    unit,
                    samples[label + OURS + row],
                    higher_is_better=False,
                    vs=(label + RAW + row,),
                ),
            ]
    where = "one server" if server.kind == "redis" else f"a {server.kind}"
    results[0].note = f"{n:,} cold tokens per run, each checked once, on {where}"
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
