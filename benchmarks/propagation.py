"""propagation: the delay from an admin write to every one of 4 validator processes seeing it.

Reuses `tests.faults.propagation.measure()`: 4 worker processes, each a Validator with a warm
cache on one redis-server, and one token whose decision every change flips. Per run, 200
changes (20 with --quick), made one at a time through the admin API (`Admin.set_ips`) from this
process; each change's delay is until the slowest of the 4 processes has seen it (its cache
entry invalidated), from just before the write. Figures: the p50 and p99 of those per run.
`measure()`'s `redis-cli` changes are off here: their delay would include starting redis-cli
(tests/faults/test_propagation.py covers them).

Always on a throwaway redis-server, even with --store: `measure()` writes under the default key
prefix with a secret of its own, and its marker would make a real store look wiped to validators
configured with another secret.

Baseline in the same run: the admin write alone (`Admin.set_ips` round trip, p50 and p99 over
as many writes as changes), the least a change can take to be seen anywhere.
"""

from __future__ import annotations

import time

from benchmarks._harness import Config, Result, module_main, percentile, progress, redis_server, run_async
from tests.faults.propagation import measure
from validator import Admin

NAME = "propagation"
PROCESSES = 4


async def _write_latencies(url: str, count: int) -> list[float]:
    admin = Admin.from_url(url, secret="propagation-secret")
    try:
        await admin.init(force=True)
        latencies = []
        for n in range(-3, count):  # the first writes set up the connection, marker and script
            if n < 0:
                await admin.set_ips("tok_propagation_baseline", ["203.0.113.9"])
                continue
            start = time.perf_counter_ns()
            await admin.set_ips("tok_propagation_baseline", ["203.0.113.7" if n % 2 else "203.0.113.8"])
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        return latencies
    finally:
        await admin.close()


async def _main(config: Config) -> list[Result]:
    changes = config.pick(200, 20)
    runs = config.runs_or(5, 1)
    p50: list[float] = []
    p99: list[float] = []
    write50: list[float] = []
    write99: list[float] = []
    missed = wrong = 0
    with redis_server(Config(quick=config.quick, runs=config.runs)) as server:
        for run in range(runs):
            progress(NAME, f"run {run + 1}/{runs}: {changes} changes, {PROCESSES} processes")
            writes = await _write_latencies(server.url, changes)
            result = await measure(
                server.url, server.port, processes=PROCESSES, changes=changes, via_redis_cli_every=0
            )
            missed += result.missed
            wrong += len(result.wrong)
            if result.missed or len(result.delays) != changes * PROCESSES:
                raise RuntimeError(f"propagation: {result.missed} (change, process) pairs never seen")
            # `delays` holds each change's delays to the processes, change after change.
            slowest = [
                max(result.delays[i : i + PROCESSES]) * 1e3 for i in range(0, len(result.delays), PROCESSES)
            ]
            p50.append(percentile(slowest, 50))
            p99.append(percentile(slowest, 99))
            write50.append(percentile(writes, 50))
            write99.append(percentile(writes, 99))
    note = (
        f"{changes} changes x {runs} run(s), {PROCESSES} processes; missed {missed}, wrong decisions {wrong}"
    )
    return [
        Result(NAME, "admin write round trip p50", "ms", write50, higher_is_better=False),
        Result(NAME, "admin write round trip p99", "ms", write99, higher_is_better=False),
        Result(
            NAME,
            f"p50 delay to all {PROCESSES} processes",
            "ms",
            p50,
            higher_is_better=False,
            vs=("admin write round trip p50",),
            note=note,
        ),
        Result(
            NAME,
            f"p99 delay to all {PROCESSES} processes",
            "ms",
            p99,
            higher_is_better=False,
            vs=("admin write round trip p99",),
        ),
    ]


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
