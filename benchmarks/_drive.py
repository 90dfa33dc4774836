"""Running many checks with a fixed number of concurrent tasks, as a server's in-flight requests."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from benchmarks._data import Request

__all__ = ["Check", "drive"]

# (token, origin, client_ip) -> allowed?
Check = Callable[[str, str | None, str | None], Awaitable[bool]]


async def drive(
    check: Check, requests: Sequence[Request], concurrency: int, expect: bool = True, timeout: float = 300.0
) -> int:
    """Run `check` once per request with `concurrency` tasks taking the next request as they
    finish one; returns the elapsed nanoseconds. Raises if a decision is not `expect`, or if
    the checks have not all finished within `timeout` seconds (then every task's stack goes to
    stderr, to show where a check hangs)."""
    pending = iter(requests)
    wrong: list[Request] = []
    in_flight: set[Request] = set()
    done = 0

    async def task() -> None:
        nonlocal done
        # One iterator shared by every task: each takes the next request when it is free.
        for request in pending:
            in_flight.add(request)
            if await check(*request) is not expect:
                wrong.append(request)
            in_flight.discard(request)
            done += 1

    start = time.perf_counter_ns()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(task() for _ in range(concurrency)))
    except TimeoutError:
        for running in asyncio.all_tasks():
            running.print_stack(file=sys.stderr)
        raise RuntimeError(
            f"{len(in_flight)} checks hung for {timeout:.0f} s ({done:,} of {len(requests):,} done), "
            f"e.g. {next(iter(in_flight), None)}"
        ) from None
    elapsed = time.perf_counter_ns() - start
    if wrong:
        raise RuntimeError(f"{len(wrong)} checks did not give allowed={expect}, e.g. {wrong[0]}")
    return elapsed
