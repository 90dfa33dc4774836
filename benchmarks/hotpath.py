"""hotpath: the cost of one cached check, over many distinct tokens in random order.

Every token (100,000; 10,000 with --quick) has both restrictions on, 5 domains and 5 IPs, and
is cached before timing (a real redis-server, `ttl` far beyond the run, `cache_size` >= tokens,
invalidation off: it does not touch the hit path). One timed pass checks every token once, in a
shuffled order, for each case: front-end allow (Origin is a listed domain), front-end deny
(unlisted Origin), back-end allow (listed client IP), back-end deny (unlisted IP).

Three data sets, each with its own tokens, measured one after the other: "distinct", the worst
case, where Origins and addresses differ from token to token, denied ones included (no memo of
recent values can help); "realistic", where every token lists 5 of 50 domains and 5 of 50
addresses, so that requests come from 50 Origins and 50 client IPs in all; and "expiring", the
realistic data with every entry expiring a day later (issue 16: what a look at the clock before
each decision costs), timed beside a second validator that caches the same tokens and entries
without expiry ("no expiry"), interleaved in the same runs.

Alternatives, interleaved run by run (ABAB): `check_cached()` (the synchronous fast path), `await
check()`, the floor: a hand-written function doing only the dict look-up, host cut and set
membership (`benchmarks._baselines.floor_check`), called plainly and as a coroutine, and the peer
(distinct and realistic data): the afternoon implementation a team would write instead
(`benchmarks._baselines.PeerCheck`: redis-py with hiredis reading the same keys, each record's
sets kept in a `cachetools.TTLCache` of `tokens` entries), awaited, its cache filled the same way. Figures are
ns per check including the loop over the requests, which every alternative pays alike.

Both the validator's cache and the floor's table are filled in token order, with token strings
of their own, unrelated to the shuffled order that is timed: a cache warmed in the timed order
would be laid out in memory in the order it is read, which no floor built otherwise shares.
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
from collections.abc import Awaitable, Callable

from benchmarks._baselines import FloorTable, PeerCheck, floor_check, floor_check_async
from benchmarks._data import (
    SECRET,
    Request,
    allowed_request,
    denied_request,
    domains,
    ips,
    record,
    seed,
    token,
)
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
from validator.admin.api import PreparedPut

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
PEER = "peer: redis-py + TTLCache, awaited"


def timed_floor(table: FloorTable, requests: list[Request]) -> int:
    """ns for the hand-written floor over `requests` (also used by `scaling`)."""
    check = floor_check
    start = time.perf_counter_ns()
    for token_, origin, client_ip in requests:
        check(table, token_, origin, client_ip)
    return time.perf_counter_ns() - start


def timed_check_cached(validator: Validator, requests: list[Request]) -> int:
    """ns for `check_cached()` over `requests` (also used by `scaling`)."""
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


async def _peer(peer: PeerCheck, requests: list[Request]) -> int:
    check = peer.check
    start = time.perf_counter_ns()
    for token_, origin, client_ip in requests:
        await check(token_, origin, client_ip)
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


# data set -> (token kind: 4 letters, so tokens stay 35 characters long; whether its tokens list
# shared values: `benchmarks._data`, `shared`)
DATA_SETS: dict[str, tuple[str, bool]] = {
    "distinct": ("live", False),
    "realistic": ("real", True),
    "expiring": ("expi", True),
}
# Data sets whose entries all expire (a day after seeding): their checks are timed beside those of
# a second validator caching the same tokens and entries without expiry, interleaved in each run.
EXPIRING = {"expiring"}
CACHED_PLAIN = "check_cached(), no expiry"
AWAITED_PLAIN = "await check(), no expiry"


async def _seed_expiring(admin: Admin, n: int, kind: str, shared: bool) -> None:
    """`seed`, with every entry expiring a day from now."""
    await admin.init(force=True)
    at = int((time.time() + 86_400) * 1000)
    for start in range(0, n, 1000):
        batch = []
        for i in range(start, min(n, start + 1000)):
            r = record(i, shared)
            r.domain_expiry = dict.fromkeys(r.domains, at)
            r.ip_expiry = dict.fromkeys(r.ips, at)
            batch.append(PreparedPut(admin.token_hash(token(i, kind)), r))
        await admin.put_many(batch)


async def _measure(config: Config, url: str, data_set: str, n: int, runs: int) -> dict[str, list[float]]:
    """Seed and cache `n` tokens of `data_set`, then time every case; ns/check samples by case."""
    kind, shared = DATA_SETS[data_set]
    order = list(range(n))
    random.Random(6).shuffle(order)
    requests = {
        case: [
            allowed_request(i, front, kind, shared) if allow else denied_request(i, front, kind, shared)
            for i in order
        ]
        for case, (front, allow) in CASES.items()
    }
    # Filled in token order, each with token strings of its own (see the module docstring).
    table: FloorTable = {
        token(i, kind): (frozenset(domains(i, shared)), frozenset(ips(i, shared))) for i in range(n)
    }
    expiring = data_set in EXPIRING
    prefix, plain_prefix = unique_prefix(NAME), unique_prefix(NAME)
    admin = Admin.from_url(url, secret=SECRET, key_prefix=prefix)
    progress(NAME, f"{data_set}: seeding {n:,} tokens")
    if expiring:
        await _seed_expiring(admin, n, kind, shared)
        plain_admin = Admin.from_url(url, secret=SECRET, key_prefix=plain_prefix)
        await seed(plain_admin, range(n), kind, shared=shared)
        await plain_admin.close()
    else:
        await seed(admin, range(n), kind, shared=shared)
    await admin.close()
    validators = [
        Validator.from_url(url, secret=SECRET, key_prefix=p, cache_size=n, ttl=1e9, invalidation=False)
        for p in ((prefix, plain_prefix) if expiring else (prefix,))
    ]
    validator, plain = validators[0], validators[-1]
    samples: dict[str, list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for v in validators:
            await stack.enter_async_context(connected(v, NAME))
            progress(NAME, f"{data_set}: warming the cache with {n:,} cold checks")
            await _warm(v, [allowed_request(i, True, kind, shared) for i in range(n)])
            for case, (_, allow) in CASES.items():
                _verify(v, requests[case], allow)
        for case, (_, allow) in CASES.items():
            if not all(floor_check(table, *r) is allow for r in requests[case]):
                raise RuntimeError(f"hotpath: the floor got {data_set} {case} wrong")
        peer: PeerCheck | None = None
        if not expiring:
            # The afternoon implementation, filled in token order by its own reads as the validator's.
            peer = PeerCheck(url, validator.store, maxsize=n, ttl=86_400.0)
            stack.push_async_callback(peer.close)
            progress(NAME, f"{data_set}: warming the peer's TTLCache with {n:,} cold checks")
            await drive(peer.check, [allowed_request(i, True, kind, shared) for i in range(n)], 64)
            for case, (_, allow) in CASES.items():
                for r in requests[case]:
                    if await peer.check(*r) is not allow:
                        raise RuntimeError(f"hotpath: the peer got {data_set} {case} wrong")
        loads = [v.cache.loads_started for v in validators]
        sync: dict[str, Callable[[list[Request]], int]] = {
            FLOOR: lambda r: timed_floor(table, r),
            CACHED: lambda r: timed_check_cached(validator, r),
            CACHED_PLAIN: lambda r: timed_check_cached(plain, r),
        }
        awaited: dict[str, Callable[[list[Request]], Awaitable[int]]] = {
            FLOOR_ASYNC: lambda r: _floor_async(table, r),
            AWAITED: lambda r: _awaited(validator, r),
            AWAITED_PLAIN: lambda r: _awaited(plain, r),
        }
        if peer is not None:
            peer_check = peer
            awaited[PEER] = lambda r: _peer(peer_check, r)
        impls = [FLOOR, CACHED, FLOOR_ASYNC, AWAITED] + (
            [CACHED_PLAIN, AWAITED_PLAIN] if expiring else [PEER]
        )
        for run in range(runs):
            progress(NAME, f"{data_set}: run {run + 1}/{runs}")
            for case in CASES:
                for impl in interleaved(impls, run):
                    elapsed = (
                        sync[impl](requests[case]) if impl in sync else await awaited[impl](requests[case])
                    )
                    samples.setdefault(f"{data_set}: {case}: {impl}", []).append(elapsed / n)
        if [v.cache.loads_started for v in validators] != loads:
            raise RuntimeError("hotpath: a timed check missed the cache")
    return samples


async def _main(config: Config) -> list[Result]:
    n = config.pick(100_000, 10_000)
    runs = config.runs_or(7, 3)
    samples: dict[str, list[float]] = {}
    with redis_server(config, multi_node=True) as server:
        for data_set in DATA_SETS:
            samples.update(await _measure(config, server.url, data_set, n, runs))
            gc.collect()  # the first data set's validator and table, gone before the next is built
    results: list[Result] = []
    for data_set in DATA_SETS:
        for case in CASES:
            name = f"{data_set}: {case}"
            rows: list[tuple[str, tuple[str, ...]]] = [
                (FLOOR, ()),
                (FLOOR_ASYNC, ()),
                (PEER, (FLOOR_ASYNC,)),
                (CACHED, (FLOOR, PEER)),
                (AWAITED, (FLOOR_ASYNC, FLOOR, PEER)),
            ]
            if data_set in EXPIRING:
                # The same tokens and entries without expiry, timed in the same runs.
                rows = [
                    (FLOOR, ()),
                    (CACHED_PLAIN, ()),
                    (CACHED, (CACHED_PLAIN, FLOOR)),
                    (FLOOR_ASYNC, ()),
                    (AWAITED_PLAIN, ()),
                    (AWAITED, (AWAITED_PLAIN, FLOOR_ASYNC)),
                ]
            for impl, vs in rows:
                results.append(
                    Result(
                        NAME,
                        f"{name}: {impl}",
                        "ns/check",
                        samples[f"{name}: {impl}"],
                        higher_is_better=False,
                        vs=tuple(f"{name}: {v}" for v in vs),
                    )
                )
    results[0].note = (
        f"{n:,} cached tokens per data set, checked in shuffled order, each once per case and run; "
        "distinct: Origins and IPs differ per token; realistic: 50 Origins and 50 IPs in all; "
        "expiring: realistic with every entry expiring a day later; peer: redis-py + hiredis + "
        "cachetools.TTLCache holding the same records (distinct and realistic)"
    )
    return results


def run(config: Config) -> list[Result]:
    return run_async(_main(config))


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
