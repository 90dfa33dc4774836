"""Shutdown always ends, promptly (docs/behaviour.md, "Lifecycle"): in every state of a validator's
life, on one server, a Sentinel master and a Cluster primary, `close()` returns within 1 s and
leaves no task running; a program that forgets `close()` still exits.

Regression (issue 22, item 3): a listener poked (a node lost, a MOVED) at the moment it was
stopped swallowed its cancellation (`asyncio.wait_for` on Python 3.11), so `close()` took 4 s
("did not stop within 4 s") and `asyncio.run()` never returned (state "poked" on Cluster and
Sentinel, and most Sentinel states of the unclosed program, fail on the old code); with the node
frozen, `close()` also waited ~1 s for the denial log's writer.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.faults.outage import Deployment
from tests.faults.shutdown_states import CLIENT_IP, SECRET, STATES, TOKEN, bring
from tests.redis_cluster import LocalCluster
from validator import Decision, Validator
from validator.store import Store
from validator.store.layout import slot_of

CLOSE_BOUND = 1.0  # the promise
ROOT = Path(__file__).resolve().parents[2]


def _victim(deployment: Deployment, state: str) -> int:
    node = deployment.node_of(TOKEN)
    assert node.process is not None
    # Registered as broken before the signal, so that `restore()` brings it back.
    if state in ("dead", "backing-off"):
        deployment.broken.append((node, "killed"))
    elif state in ("connecting", "mid-read", "hanging"):
        deployment.broken.append((node, "stopped"))
    return node.process.pid


@pytest.mark.promise("P-CLOSE-PROMPT")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("state", STATES)
async def test_close_returns_within_a_second(deployment: Deployment, state: str) -> None:
    await deployment.reset({TOKEN: [CLIENT_IP]})
    validator = Validator.from_url(deployment.url, secret=SECRET)
    before = asyncio.all_tasks()
    try:
        in_flight = await bring(validator, state, _victim(deployment, state))
        started = time.monotonic()
        await asyncio.wait_for(validator.close(), 10)
        took = time.monotonic() - started
        # Every task the validator started ends too (the check in flight included).
        left = asyncio.all_tasks() - before - {asyncio.current_task()}
        if left:
            await asyncio.wait(left, timeout=CLOSE_BOUND)
        running = sorted(t.get_coro().__qualname__ for t in left if not t.done())  # type: ignore[union-attr]
        print(f"{deployment.kind} {state}: close() {took:.3f} s")  # the report's figures
        assert took < CLOSE_BOUND, f"close() took {took:.2f} s"
        assert not running, running
        if in_flight is not None:
            assert in_flight.done()
    finally:
        deployment.restore()
        await validator.close()


@pytest.mark.promise("P-UNCLOSED-EXITS")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("state", STATES)
def test_a_program_that_forgets_close_still_exits(deployment: Deployment, state: str) -> None:
    asyncio.run(deployment.reset({TOKEN: [CLIENT_IP]}))
    try:
        pid = _victim(deployment, state)
        program = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.shutdown_states", deployment.url, state, str(pid)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = program.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            program.kill()
            out, err = program.communicate()
            pytest.fail(f"asyncio.run() did not return: {err.decode()[-2000:]}")
        ended = time.time()
        assert program.returncode == 0, err.decode()[-2000:]
        returned = float(out.decode().split("returning ")[1].split()[0])
        # From main() returning to the process exiting (interpreter teardown included).
        assert ended - returned < 3.0, (ended - returned, err.decode()[-2000:])
    finally:
        deployment.restore()


# Where a close lands after `connect()` began: after so many turns of the event loop (through
# every step of the first slot-map read and of the subscriptions), then at times (the dead
# primary's subscription refused, then backing off; connect given up).
CONNECT_TURNS = tuple(range(0, 40, 2))
CONNECT_OFFSETS = (0.005, 0.02, 0.05, 0.1, 0.3)


@pytest.mark.promise("P-CLOSE-PROMPT")
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("during", ["connecting", "idle", "mid-read"])
async def test_close_on_a_cluster_with_a_primary_dead(cluster: LocalCluster, during: str) -> None:
    """A Cluster whose primary was just killed (its replica not promoted yet, then promoted):
    `close()` while `connect()` runs, idle, or with a read of the dead primary's slots in flight,
    returns within the bound, every task of the validator ends, and every client it opened is
    closed (no unclosed-client warning once it is collected).

    Regression (issue 22): a close during `connect()` left `InvalidationListener._node` running
    past 2 s (a node task that swallowed its cancellation went on to its backoff sleep, and the
    listener's `stop` only waited for its main task), and a background task that outlived its
    bound re-opened the store's RedisCluster client after `store.close()` (redis-py reconnects on
    the next command), which nobody closed again ("Unclosed RedisCluster client")."""
    victim = cluster.primaries()[0]
    hasher = Store.from_url("memory://", secret=SECRET)
    # A token of the dead primary's slots, for the read in flight (never cached: a read each time).
    cold = next(
        t for n in range(1000) if cluster.owner(slot_of(hasher.token_hash(t := f"{TOKEN}-{n}"))) is victim
    )
    victim.kill()
    unclosed: list[str] = []
    turns = CONNECT_TURNS if during == "connecting" else ()
    for offset in [*(-turn for turn in turns), *CONNECT_OFFSETS]:  # negative: loop turns
        validator = Validator.from_url(
            cluster.url,
            secret=SECRET,
            timeout=0.25,
            connect_timeout=0.25,
            ping_interval=0.2,
            ping_timeout=0.3,
        )
        before = asyncio.all_tasks()
        connecting = asyncio.ensure_future(validator.connect(wait=2.0))
        in_flight: asyncio.Future[Decision] | None = None
        if during == "connecting":
            for _ in range(int(-offset)):
                await asyncio.sleep(0)
            await asyncio.sleep(max(offset, 0.0))
        else:
            await connecting
            if during == "mid-read":
                read = in_flight = asyncio.ensure_future(validator.check(cold, client_ip=CLIENT_IP))
                read.add_done_callback(lambda t: t.cancelled() or t.exception())
            await asyncio.sleep(offset)
        started = time.monotonic()
        await asyncio.wait_for(validator.close(), 10)
        took = time.monotonic() - started
        await asyncio.wait({connecting}, timeout=3.0)  # the caller's own wait, bounded by its argument
        left = asyncio.all_tasks() - before - {asyncio.current_task(), connecting}
        if left:
            await asyncio.wait(left, timeout=CLOSE_BOUND)
        running = sorted(t.get_coro().__qualname__ for t in left if not t.done())  # type: ignore[union-attr]
        at = f"after {int(-offset)} loop turns" if offset <= 0 else f"+{offset:.3f} s"
        print(f"cluster, a primary dead, {during} {at}: close() {took:.3f} s")
        assert took < CLOSE_BOUND, f"close() took {took:.2f} s ({during}, {at})"
        assert not running, (during, at, running)
        assert connecting.done()
        if in_flight is not None:
            assert in_flight.done()
        # Every client it opened is closed: collected now, none says it was left open.
        del validator, connecting, in_flight, left
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        unclosed += [f"{at}: {w.message}" for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed
