"""Bring a validator into one state of its life for the shutdown tests, and (run as a module) a
program whose `main()` does so and returns without `close()`:

    python -m tests.faults.shutdown_states URL STATE PID

`PID` is the redis-server of the token's node, which the program freezes or kills itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

from validator import Decision, StoreUnavailable, Validator

__all__ = ["CLIENT_IP", "SECRET", "STATES", "TOKEN", "bring"]

SECRET = "outage-secret"
TOKEN = "tok-shutdown"
CLIENT_IP = "198.51.100.20"
# connected: all well; connecting: the node froze before the validator started (connects and the
# subscription hang); backing-off: the node died a while ago (reconnects refused, with backoff);
# mid-read: an uncached check waits for the frozen node; dead: killed just now; hanging: frozen
# just now, with denials queued for the writer; poked: all well, but the listener was told to
# look at the topology (a node lost its connection, a read met a MOVED) at the very moment the
# validator is closed or the program ends, which made the listener swallow its cancellation.
STATES = ("connected", "connecting", "backing-off", "mid-read", "dead", "hanging", "poked")


async def bring(validator: Validator, state: str, pid: int) -> asyncio.Future[Decision] | None:
    """Bring `validator` (not started) into `state`, freezing (SIGSTOP) or killing (SIGKILL) the
    process `pid`; returns the check in flight for "mid-read"."""
    if state == "connecting":
        os.kill(pid, signal.SIGSTOP)
        validator.start()
        await asyncio.sleep(0.2)
        return None
    await validator.connect()
    assert (await validator.check(TOKEN, client_ip=CLIENT_IP)).allowed
    await validator.check(TOKEN, client_ip="203.0.113.9")  # a denial, for the writer
    if state == "backing-off":
        os.kill(pid, signal.SIGKILL)
        assert validator.listener is not None
        await asyncio.wait_for(validator.listener.lost.wait(), 5)
        await asyncio.sleep(0.3)
    elif state == "dead":
        os.kill(pid, signal.SIGKILL)
    elif state == "hanging":
        os.kill(pid, signal.SIGSTOP)
        for _ in range(5):
            await validator.check(TOKEN, client_ip="203.0.113.9")
        await asyncio.sleep(0.05)
    elif state == "poked":
        assert validator.listener is not None
        # The last thing done before `close()` or the end of `main()`, in the same step.
        validator.listener.poke()
    elif state == "mid-read":
        os.kill(pid, signal.SIGSTOP)
        in_flight = asyncio.ensure_future(validator.check(f"{TOKEN}-cold", client_ip=CLIENT_IP))
        in_flight.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.sleep(0.05)
        return in_flight
    return None


async def _main(url: str, state: str, pid: int) -> None:
    validator = Validator.from_url(url, secret=SECRET)
    with contextlib.suppress(StoreUnavailable):
        await bring(validator, state, pid)
    print(f"returning {time.time():.6f}", flush=True)  # read by the test
    # ... and no `close()`.


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
