"""scaling: how the cost of a cached check, the memory per token and the miss throughput grow.

Cached checks: 1,000, 10,000, 100,000 and 1,000,000 tokens (1,000 only with --quick; the
environment variable `BENCHMARKS_SCALING_MAX_TOKENS` caps the sizes, e.g. 100000 to leave out
the million, which takes a few minutes to seed and warm on a quiet machine, 25-30 on a busy
one), each with both restrictions on and the "realistic" data of `hotpath` (5 of 50 domains, 5
of 50 addresses per token). For each size, one size at a time, in a fresh validator:

- RSS per token: in a fresh process per size (seeding's garbage is not reused), the resident set
  (`VmRSS`, after `gc.collect()` and `malloc_trim`) after the validator's cache is warmed by
  `check()` from a real redis-server, minus before, minus what the warming requests hold beyond
  their token strings (tuples, Origins: `sys.getsizeof`), per token: what the cache keeps, with
  what Python's allocators keep around it. Baseline: the same delta for the floor's table,
  `{token: (frozenset(domains), frozenset(ips))}`, built next in the same process.
- ns per check: every token checked once in shuffled order, front-end allow and back-end allow,
  `check_cached()` against the floor (`benchmarks._baselines.floor_check`), interleaved run by
  run (ABAB), as in `hotpath`.

Misses: 5,000 stored tokens (500 with --quick) checked once each, nothing cached, with 1, 10, 100
and 1,000 concurrent tasks: `Validator.check()` (default settings: `max_concurrent_loads`=64)
against the raw floor of `miss` (one multiplexed connection, hiredis), in the same runs. With each,
the client's CPU (this process's CPU time over the wall time: 1.0 is one core saturated) and
redis-server's (`used_cpu_user` + `used_cpu_sys`, over the wall time): where throughput stops
growing, the one whose share is near 1 is the limit.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import random
import subprocess
import sys
import time

from benchmarks._baselines import FloorTable, RawCheck, floor_check
from benchmarks._data import SECRET, allowed_request, domains, ips, seed, token
from benchmarks._drive import Check, drive
from benchmarks._harness import (
    ROOT,
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
from benchmarks.hotpath import timed_check_cached, timed_floor
from validator import Admin, Validator

NAME = "scaling"
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000,)  # --quick: a smoke test of the whole suite, bounded in time
TASKS = (1, 10, 100, 1_000)
KIND = "scal"  # 4 letters: tokens stay 35 characters long, as in hotpath
CACHED = "check_cached()"
FLOOR = "floor (hand-written)"
OURS = "Validator.check()"
RAW = "raw client (floor)"
# case -> front end?
CASES = {"front-end allow": True, "back-end allow": False}


def _libc_trim() -> None:
    """Give freed heap memory back to the system (glibc), so that RSS deltas show what is kept."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _rss() -> int:
    """This process's resident set in bytes, after a collection and a heap trim."""
    gc.collect()
    _libc_trim()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("scaling: no VmRSS in /proc/self/status")


async def _cached_size(url: str, prefix: str, n: int, runs: int) -> dict[str, list[float]]:
    """In a process of its own (`_child`): warm a validator with the `n` tokens stored under
    `prefix` and build the floor's table, measuring the RSS each adds, then time every case."""
    samples: dict[str, list[float]] = {}
    validator = Validator.from_url(
        url, secret=SECRET, key_prefix=prefix, cache_size=n, ttl=1e9, invalidation=False
    )

    async def check(token_: str, origin: str | None, client_ip: str | None) -> bool:
        return (await validator.check(token_, origin=origin, client_ip=client_ip)).allowed

    async with connected(validator, NAME):
        # Connections, scripts and the store marker set up before the first RSS figure.
        await drive(check, [allowed_request(i, True, KIND, True) for i in range(min(n, 100))], 64)
        validator.cache.clear()
        progress(NAME, f"{n:,} tokens: warming the cache with cold checks")
        before = _rss()
        warm = [allowed_request(i, True, KIND, True) for i in range(n)]
        # What the requests hold beyond the token string (which the cache keeps): list slot,
        # tuple, Origin string; kept alive until both figures are taken, and subtracted.
        requests_bytes = sum(8 + sys.getsizeof(r) + sys.getsizeof(r[1]) for r in warm)
        # A million cold checks take minutes on a busy machine: drive's default bound is 300 s.
        await drive(check, warm, 64, timeout=max(300.0, n / 200))
        ours = _rss() - before - requests_bytes
        before = _rss()
        table: FloorTable = {
            token(i, KIND): (frozenset(domains(i, True)), frozenset(ips(i, True))) for i in range(n)
        }
        floor = _rss() - before
        del warm
        samples[f"RSS per token, {n:,} tokens: Validator cache"] = [ours / n]
        samples[f"RSS per token, {n:,} tokens: {FLOOR}"] = [floor / n]
        order = list(range(n))
        random.Random(6).shuffle(order)
        requests = {
            case: [allowed_request(i, front, KIND, True) for i in order] for case, front in CASES.items()
        }
        loads = validator.cache.loads_started
        for case in CASES:
            if not all(floor_check(table, *r) for r in requests[case]):
                raise RuntimeError(f"scaling: the floor got {case} wrong")
            for r in requests[case][:1000]:
                decision = validator.check_cached(r[0], origin=r[1], client_ip=r[2])
                if decision is None or not decision.allowed:
                    raise RuntimeError(f"scaling: {r} gave {decision} from the cache")
        for run in range(runs):
            progress(NAME, f"{n:,} tokens: run {run + 1}/{runs}")
            for case in CASES:
                for impl in interleaved([FLOOR, CACHED], run):
                    elapsed = (
                        timed_floor(table, requests[case])
                        if impl == FLOOR
                        else timed_check_cached(validator, requests[case])
                    )
                    samples.setdefault(f"{n:,} tokens: {case}: {impl}", []).append(elapsed / n)
        if validator.cache.loads_started != loads:
            raise RuntimeError("scaling: a timed check missed the cache")
    return samples


def _child(argv: list[str]) -> None:
    """The cached measurements of one size, in a fresh process (so that RSS deltas are not
    memory freed earlier, by seeding or a smaller size, taken again): samples as JSON on stdout."""
    url, prefix, n, runs = argv
    print(json.dumps(run_async(_cached_size(url, prefix, int(n), int(runs)), limit=3600.0)))


async def _sizes_in_children(
    url: str, sizes: tuple[int, ...], runs: int, samples: dict[str, list[float]]
) -> None:
    for n in sizes:
        started = time.perf_counter()
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(url, secret=SECRET, key_prefix=prefix)
        progress(NAME, f"{n:,} tokens: seeding")
        await seed(admin, range(n), KIND, shared=True)
        await admin.close()
        command = [
            sys.executable,
            "-c",
            "import sys; from benchmarks.scaling import _child; _child(sys.argv[1:])",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, url, prefix, str(n), str(runs)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            check=True,
        )
        samples.update(json.loads(done.stdout))
        samples[f"{n:,} tokens: seconds (seed, warm, runs)"] = [time.perf_counter() - started]


def _server_cpu(url: str) -> float:
    cpu = 0.0
    with _sync_primaries(url) as primaries:
        for client in primaries:
            used = client.info("cpu")
            cpu += float(used["used_cpu_user"]) + float(used["used_cpu_sys"])
    return cpu


async def _misses(url: str, n: int, runs: int, samples: dict[str, list[float]]) -> None:
    prefix = unique_prefix(NAME)
    admin = Admin.from_url(url, secret=SECRET, key_prefix=prefix)
    progress(NAME, f"misses: seeding {n:,} tokens")
    await seed(admin, range(n))
    await admin.close()
    requests = [allowed_request(i, front_end=i % 2 == 0) for i in range(n)]
    validator = Validator.from_url(url, secret=SECRET, key_prefix=prefix)
    raw = RawCheck(await RawRouter.connect(url), validator.store)

    async def ours(token_: str, origin: str | None, client_ip: str | None) -> bool:
        return (await validator.check(token_, origin=origin, client_ip=client_ip)).allowed

    checks: dict[str, Check] = {OURS: ours, RAW: raw.check}
    async with connected(validator, NAME):
        for check in checks.values():
            await drive(check, requests[:200], 100)
        for run in range(runs):
            progress(NAME, f"misses: run {run + 1}/{runs}")
            for tasks in TASKS:
                for name in interleaved(list(checks), run):
                    validator.cache.clear()
                    loads = validator.cache.loads_started
                    server = _server_cpu(url)
                    cpu = time.process_time()
                    elapsed = await drive(checks[name], requests, tasks) / 1e9
                    cpu = time.process_time() - cpu
                    server = _server_cpu(url) - server
                    if name == OURS and validator.cache.loads_started - loads != n:
                        raise RuntimeError("scaling: not every check read the store")
                    case = f"misses, {tasks:,} task(s): {name}"
                    samples.setdefault(case, []).append(n / elapsed)
                    samples.setdefault(f"{case}: client CPU", []).append(cpu / elapsed)
                    samples.setdefault(f"{case}: redis-server CPU", []).append(server / elapsed)
    raw.router.close()


def _sizes(config: Config) -> tuple[int, ...]:
    cap = int(os.environ.get("BENCHMARKS_SCALING_MAX_TOKENS") or 0)
    sizes = QUICK_SIZES if config.quick else SIZES
    return tuple(n for n in sizes if not cap or n <= cap) or sizes[:1]


async def _main(config: Config) -> list[Result]:
    sizes = _sizes(config)
    runs = config.runs_or(5, 1)
    n_miss = config.pick(5_000, 500)
    samples: dict[str, list[float]] = {}
    with redis_server(config) as server:
        await _sizes_in_children(server.url, sizes, runs, samples)
        await _misses(server.url, n_miss, runs, samples)
    results: list[Result] = []
    for n in sizes:
        label = f"{n:,} tokens: "
        for case in CASES:
            results += [
                Result(
                    NAME, f"{label}{case}: {FLOOR}", "ns/check", samples[f"{label}{case}: {FLOOR}"], False
                ),
                Result(
                    NAME,
                    f"{label}{case}: {CACHED}",
                    "ns/check",
                    samples[f"{label}{case}: {CACHED}"],
                    False,
                    vs=(f"{label}{case}: {FLOOR}", f"{sizes[0]:,} tokens: {case}: {CACHED}"),
                ),
            ]
        rss = f"RSS per token, {n:,} tokens: "
        results += [
            Result(NAME, rss + FLOOR, "B/token", samples[rss + FLOOR], False),
            Result(
                NAME,
                rss + "Validator cache",
                "B/token",
                samples[rss + "Validator cache"],
                False,
                vs=(rss + FLOOR,),
            ),
            Result(
                NAME,
                f"{label}seconds (seed, warm, runs)",
                "s",
                samples[f"{label}seconds (seed, warm, runs)"],
                False,
            ),
        ]
    for tasks in TASKS:
        label = f"misses, {tasks:,} task(s): "
        first = f"misses, {TASKS[0]} task(s): "
        results += [
            Result(
                NAME,
                label + RAW,
                "checks/s",
                samples[label + RAW],
                vs=(first + RAW,) if tasks != TASKS[0] else (),
            ),
            Result(
                NAME,
                label + OURS,
                "checks/s",
                samples[label + OURS],
                vs=(label + RAW,) + ((first + OURS,) if tasks != TASKS[0] else ()),
            ),
        ]
        for name in (RAW, OURS):
            for what in ("client CPU", "redis-server CPU"):
                results.append(
                    Result(NAME, f"{label}{name}: {what}", "cores", samples[f"{label}{name}: {what}"], False)
                )
    results[0].note = (
        f"cached: {', '.join(f'{n:,}' for n in sizes)} tokens (realistic data), {runs} run(s); misses: "
        f"{n_miss:,} cold tokens per run; CPU in cores (CPU seconds per wall second)"
    )
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config), limit=3600.0)


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
