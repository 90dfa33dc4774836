"""outage: the cost of one check while Redis is down, next to the cost with Redis up.

200 stored tokens are warmed into a validator's cache (short Redis timeouts, pinged invalidation
connection); then each run checks them 20,000 times in turn: that is the "Redis up" figure. Then
the redis-server is killed (SIGKILL), the circuit breaker is let open, and each run checks the
same cached tokens again (served stale: stale-if-error) and 20,000 tokens never seen (failing
closed: `StoreUnavailable`). Up runs come first and down runs after (the outage cannot come and
go between runs), so the ratios also carry the machine's drift over a few seconds.
Needs a redis-server of its own: with --store it is skipped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence

from benchmarks._data import SECRET, allowed_request, seed
from benchmarks._harness import Config, Result, module_main, progress, redis_server, run_async, unique_prefix
from validator import Admin, StoreUnavailable, Validator
from validator.breaker import BreakerState

NAME = "outage"
TOKENS = 200
UP = "Redis up: cached token"
STALE = "Redis down: cached token (stale-if-error)"
CLOSED = "Redis down: uncached token (fails closed)"


async def _per_check(
    validator: Validator, tokens: Sequence[tuple[str, str | None]], checks: int, *, served: bool = False
) -> float:
    """ns per check; `served`: every check must be answered (a refusal is an error, not a figure:
    the cached tokens' stale-if-error)."""
    refused = 0
    started = time.perf_counter_ns()
    for n in range(checks):
        token, client_ip = tokens[n % len(tokens)]
        try:
            await validator.check(token, client_ip=client_ip)
        except StoreUnavailable:
            refused += 1
    elapsed = (time.perf_counter_ns() - started) / checks
    if served and refused:
        raise RuntimeError(f"outage: {refused} of {checks} checks of cached tokens refused with Redis down")
    return elapsed


async def _main(config: Config) -> list[Result]:
    if config.store:
        progress(NAME, "skipped: it kills its own redis-server, and --store names someone else's")
        return []
    runs, checks = config.runs_or(7, 2), 2_000 if config.quick else 20_000
    samples: dict[str, list[float]] = {UP: [], STALE: [], CLOSED: []}
    with redis_server(config) as server:
        assert server.pid is not None
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(server.url, secret=SECRET, key_prefix=prefix)
        await seed(admin, range(TOKENS))
        await admin.close()
        cached = [(t, ip) for t, _, ip in (allowed_request(i, front_end=False) for i in range(TOKENS))]
        async with Validator.from_url(
            server.url,
            secret=SECRET,
            key_prefix=prefix,
            timeout=0.2,
            connect_timeout=0.2,
            ping_interval=0.2,
            ping_timeout=0.3,
        ) as validator:
            for token, client_ip in cached:
                assert (await validator.check(token, client_ip=client_ip)).allowed
            for run in range(runs):
                progress(NAME, f"Redis up, run {run + 1}/{runs}")
                samples[UP].append(await _per_check(validator, cached, checks))
            os.kill(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while validator.breaker.state is not BreakerState.OPEN:
                if time.monotonic() > deadline:
                    raise RuntimeError("outage: the circuit breaker did not open within 10 s")
                await _per_check(validator, [("never-seen", "192.0.2.1")], 1)
                await asyncio.sleep(0.01)
            for run in range(runs):
                progress(NAME, f"Redis down, run {run + 1}/{runs}")
                samples[STALE].append(await _per_check(validator, cached, checks, served=True))
                cold = [(f"cold-{run}-{n}", "192.0.2.1") for n in range(checks)]
                samples[CLOSED].append(await _per_check(validator, cold, checks))
    note = f"{checks:,} checks per run over {TOKENS} cached tokens (down: and as many never-seen ones)"
    return [
        Result(NAME, UP, "ns/check", samples[UP], higher_is_better=False, note=note),
        Result(NAME, STALE, "ns/check", samples[STALE], higher_is_better=False, vs=(UP,)),
        Result(NAME, CLOSED, "ns/check", samples[CLOSED], higher_is_better=False, vs=(UP,)),
    ]


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
