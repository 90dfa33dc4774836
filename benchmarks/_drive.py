"""Running many checks with a fixed number of concurrent tasks, as a server's in-flight requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from benchmarks._data import Request

__all__ = ["Check", "drive"]

# (token, origin, client_ip) -> allowed?
Check = Callable[[str, str | None, str | None], Awaitable[bool]]


async def drive(check: Check, requests: Sequence[Request], concurrency: int, expect: bool = True) -> int:
    """Run `check` once per request with `concurrency` tasks taking the next request as they
    finish one; returns the elapsed nanoseconds. Raises if a decision is not `expect`."""
    pending = iter(requests)
    wrong: list[Request] = []

    async def task() -> None:
        # One iterator shared by every task: each takes the next request when it is free.
        for request in pending:
            if await check(*request) is not expect:
                wrong.append(request)

    start = time.perf_counter_ns()
    await asyncio.gather(*(task() for _ in range(concurrency)))
    elapsed = time.perf_counter_ns() - start
    if wrong:
        raise RuntimeError(f"{len(wrong)} checks did not give allowed={expect}, e.g. {wrong[0]}")
    return elapsed
