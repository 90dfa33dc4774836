"""Propagation of admin changes to many validator processes, measured from the outside.

`python -m tests.faults.propagation URL SECRET TOKEN` runs one worker: a Validator with a warm
cache for TOKEN that, each time an invalidation evicts TOKEN, checks it again and prints one JSON
line if the decision changed: {"seen": <time.time() at eviction>, "allowed": <new decision>}.
`measure()` starts N workers, makes changes (through the admin API, or `redis-cli`) and collects,
per change, the delay until each worker saw it. Used by tests/faults and `benchmarks propagation`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field

from validator import Admin, Validator

CLIENT_IP = "198.51.100.20"
OTHER_IP = "203.0.113.99"


async def worker(url: str, secret: str, token: str) -> None:
    async with Validator.from_url(url, secret=secret) as validator:
        await validator.sync()
        evicted = asyncio.Queue[float]()
        token_hash = validator.store.token_hash(token)
        invalidate = validator.cache.invalidate

        def watching(changed_hash: str) -> None:
            if changed_hash == token_hash:
                evicted.put_nowait(time.time())
            invalidate(changed_hash)

        validator.cache.invalidate = watching  # type: ignore[method-assign,assignment]
        last = (await validator.check(token, client_ip=CLIENT_IP)).allowed
        print(json.dumps({"ready": True}), flush=True)
        while True:
            seen = await evicted.get()
            allowed = (await validator.check(token, client_ip=CLIENT_IP)).allowed
            # One change touches several keys, hence several evictions; every change the
            # driver makes flips the decision, so report flips only.
            if allowed is not last:
                last = allowed
                print(json.dumps({"seen": seen, "allowed": allowed}), flush=True)


@dataclass
class Propagation:
    delays: list[float] = field(default_factory=list)  # seconds, one per (change, process)
    wrong: list[str] = field(default_factory=list)  # a process that saw a change but decided wrongly
    missed: int = 0  # (change, process) pairs never seen within the timeout


async def _line(process: asyncio.subprocess.Process, timeout: float) -> dict[str, object]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    if not line:
        raise RuntimeError("a propagation worker exited")
    loaded: dict[str, object] = json.loads(line)
    return loaded


async def measure(
    url: str,
    port: int,
    *,
    processes: int = 4,
    changes: int = 200,
    secret: str = "propagation-secret",
    via_redis_cli_every: int = 10,
    timeout: float = 5.0,
) -> Propagation:
    """Start `processes` workers with warm caches, make `changes` changes one at a time (every
    `via_redis_cli_every`-th by `redis-cli`, the rest by the admin API from this process) and
    time how long each takes to reach every worker."""
    token = f"tok_propagation_{os.getpid()}"
    admin = Admin.from_url(url, secret=secret)
    await admin.init()
    await admin.set_ips(token, [CLIENT_IP])
    await admin.enable(token, "ip")
    _, _, ips_key = admin.store.keys(admin.store.token_hash(token))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.propagation",
            url,
            secret,
            token,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for _ in range(processes)
    ]
    result = Propagation()
    try:
        for process in workers:
            assert (await _line(process, 30))["ready"]
        allowed = True
        for n in range(changes):
            allowed = not allowed
            started = time.time()
            if via_redis_cli_every and n % via_redis_cli_every == 0:
                args = ("SADD", ips_key, CLIENT_IP) if allowed else ("SREM", ips_key, CLIENT_IP)
                cli = await asyncio.create_subprocess_exec(
                    "redis-cli", "-p", str(port), *args, stdout=asyncio.subprocess.DEVNULL
                )
                await asyncio.wait_for(cli.wait(), timeout)
            else:
                await admin.set_ips(token, [CLIENT_IP] if allowed else [OTHER_IP])
            for process in workers:
                try:
                    report = await _line(process, timeout)
                except TimeoutError:
                    result.missed += 1
                    continue
                result.delays.append(float(report["seen"]) - started)  # type: ignore[arg-type]
                if report["allowed"] is not allowed:
                    result.wrong.append(f"change {n}: expected allowed={allowed}, got {report}")
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
            await process.wait()
        await admin.close()
    return result


if __name__ == "__main__":
    asyncio.run(worker(*sys.argv[1:4]))
