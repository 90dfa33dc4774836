"""hotpath: the cost of one cached check, over many distinct tokens in random order.

Every token (100,000; 10,000 with --quick) has both restrictions on, 5 domains and 5 IPs, and
is cached before timing (a real redis-server, `ttl` far beyond the run, `cache_size` >= tokens,
invalidation off: it does not touch the hit path). One timed pass checks every token once, in a
shuffled order, for each case: front-end allow (Origin is a listed domain), front-end deny
(unlisted Origin), back-end allow (listed client IP), back-end deny (unlisted IP). Origins and
addresses differ from token to token, denied ones included.

Alternatives, interleaved run by run (ABAB): `check_cached()` (the synchronous fast path), `await
check()`, and the floor: a hand-written function doing only the dict look-up, host cut and set
membership (`benchmarks._baselines.floor_check`), called plainly and as a coroutine. Figures are
ns per check including the loop over the requests, which every alternative pays alike.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from benchmarks._baselines import FloorTable, floor_check, floor_check_async
from benchmarks._data import SECRET, Request, allowed_request, denied_request, domains, ips, seed, token
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

NAME = "hotpath"

# case -> (front end?, allowed?)
CASES: dict[str, tuple[bool, bool]] = {
    "front-end allow": (True, True),
    "front-end deny": (True, False),
    "back-end allow": (False, True),
    "back-end deny": (False, False),
}
FLOOR = "floor (hand-written)"
FLOOR_ASYNC = "floor, awaited"
CACHED = "check_cached()"
AWAITED = "await check()"


def _floor(table: FloorTable, requests: list[Request]) -> int:
    check = floor_check
    start = time.perf_counter_ns()
    for token_, origin, client_ip in requests:
        check(table, token_, origin, client_ip)
    return time.perf_counter_ns() - start


def _check_cached(validator: Validator, requests: list[Request]) -> int:
    check = validator.check_cached
    start = time.perf_counter_ns()
    for token_, origin, client_ip in requests:
        check(token_, origin=origin, client_ip=client_ip)
    return time.perf_counter_ns() - start


async def _floor_async(table: FloorTable, requests: list[Request]) -> int:
    check = floor_check_async
    start = time.perf_counter_ns()
    for token_, origin, client_ip in requests:
        await check(table, token_, origin, client_ip)
    return time.perf_counter_ns() - start


async def _awaited(validator: Validator, requests: list[Request]) -> int:
    check = validator.check
    start = time.perf_counter_ns()
    for token_, origin, client_ip in requests:
        await check(token_, origin=origin, client_ip=client_ip)
    return time.perf_counter_ns() - start


async def _warm(validator: Validator, requests: list[Request]) -> None:
    async def check(token_: str, origin: str | None, client_ip: str | None) -> bool:
        return (await validator.check(token_, origin=origin, client_ip=client_ip)).allowed

    # As many at once as a busy server has in flight; more would only measure queueing.
    await drive(check, requests, 64)


def _verify(validator: Validator, requests: list[Request], allowed: bool) -> None:
    for token_, origin, client_ip in requests:
        decision = validator.check_cached(token_, origin=origin, client_ip=client_ip)
        if decision is None or decision.allowed is not allowed:
            raise RuntimeError(
                f"hotpath: {token_} gave {decision}, expected allowed={allowed} from the cache"
            )


async def _main(config: Config) -> list[Result]:
    n = config.pick(100_000, 10_000)
    runs = config.runs_or(7, 3)
    order = list(range(n))
    random.Random(6).shuffle(order)
    requests = {
        case: [allowed_request(i, front) if allow else denied_request(i, front) for i in order]
        for case, (front, allow) in CASES.items()
    }
    table: FloorTable = {token(i): (frozenset(domains(i)), frozenset(ips(i))) for i in range(n)}
    with redis_server(config, multi_node=True) as server:
        url = server.url
        prefix = unique_prefix(NAME)
        admin = Admin.from_url(url, secret=SECRET, key_prefix=prefix)
        progress(NAME, f"seeding {n:,} tokens")
        await seed(admin, order)
        await admin.close()
        validator = Validator.from_url(
            url, secret=SECRET, key_prefix=prefix, cache_size=n, ttl=1e9, invalidation=False
        )
        async with connected(validator, NAME):
            progress(NAME, f"warming the cache with {n:,} cold checks")
            await _warm(validator, requests["front-end allow"])
            for case, (_, allow) in CASES.items():
                _verify(validator, requests[case], allow)
                if not all(floor_check(table, *r) is allow for r in requests[case]):
                    raise RuntimeError(f"hotpath: the floor got {case} wrong")
            loads = validator.cache.loads_started
            samples: dict[str, list[float]] = {}
            sync: dict[str, Callable[[list[Request]], int]] = {
                FLOOR: lambda r: _floor(table, r),
                CACHED: lambda r: _check_cached(validator, r),
            }
            awaited: dict[str, Callable[[list[Request]], Awaitable[int]]] = {
                FLOOR_ASYNC: lambda r: _floor_async(table, r),
                AWAITED: lambda r: _awaited(validator, r),
            }
            for run in range(runs):
                progress(NAME, f"run {run + 1}/{runs}")
                for case in CASES:
                    for impl in interleaved([FLOOR, CACHED, FLOOR_ASYNC, AWAITED], run):
                        elapsed = (
                            sync[impl](requests[case])
                            if impl in sync
                            else await awaited[impl](requests[case])
                        )
                        samples.setdefault(f"{case}: {impl}", []).append(elapsed / n)
            if validator.cache.loads_started != loads:
                raise RuntimeError("hotpath: a timed check missed the cache")
    results: list[Result] = []
    for case in CASES:
        for impl, vs in (
            (FLOOR, ()),
            (CACHED, (FLOOR,)),
            (FLOOR_ASYNC, ()),
            (AWAITED, (FLOOR_ASYNC, FLOOR)),
        ):
            results.append(
                Result(
                    NAME,
                    f"{case}: {impl}",
                    "ns/check",
                    samples[f"{case}: {impl}"],
                    higher_is_better=False,
                    vs=tuple(f"{case}: {v}" for v in vs),
                )
            )
    results[0].note = f"{n:,} distinct cached tokens, shuffled; each run checks every token once per case"
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
