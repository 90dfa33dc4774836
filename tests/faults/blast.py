"""One validator process under a Redis Cluster failover, reporting what it decides, as JSON lines.

`python -m tests.faults.blast URL SECRET SPEC` runs one worker; SPEC is JSON:
{"cold": {token: group}, "watch": [token, ...], "client_ip": ip}. The worker keeps checking, in
rounds a few milliseconds apart:

- every `cold` token uncached (its entry dropped first), and prints {"t": time.time(),
  "failed": {group: n}, "why": {group: error}} for a round in which some failed closed (StoreUnavailable), and
  {"t": ..., "wrong": token} if one was ever denied (they are all stored allowed);
- every `watch` token through the cache, printing {"t": ..., "token": token, "allowed": bool}
  whenever its decision changes.

It prints {"ready": true} once synchronised. Used by tests/faults/test_blast_radius.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from validator import StoreUnavailable, Validator

ROUND = 0.005


def emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)


async def worker(url: str, secret: str, spec: dict[str, object]) -> None:
    cold: dict[str, str] = spec["cold"]  # type: ignore[assignment]
    watch: list[str] = spec["watch"]  # type: ignore[assignment]
    client_ip = str(spec["client_ip"])
    async with Validator.from_url(
        url,
        secret=secret,
        timeout=0.2,
        connect_timeout=0.2,
        ping_interval=0.2,
        ping_timeout=0.3,
        breaker_reset=0.3,
        topology_interval=0.5,
    ) as validator:
        await validator.sync()
        last = {token: (await validator.check(token, client_ip=client_ip)).allowed for token in watch}
        emit({"ready": True})
        while True:
            failed: dict[str, int] = {}
            why: dict[str, str] = {}
            for token, group in cold.items():
                validator.cache.invalidate(validator.store.token_hash(token))
                try:
                    decision = await validator.check(token, client_ip=client_ip)
                except StoreUnavailable as error:
                    failed[group] = failed.get(group, 0) + 1
                    why[group] = str(error)
                    continue
                if not decision.allowed:
                    emit({"t": time.time(), "wrong": token})
            if failed:
                emit({"t": time.time(), "failed": failed, "why": why})
            for token in watch:
                try:
                    allowed = (await validator.check(token, client_ip=client_ip)).allowed
                except StoreUnavailable:
                    continue
                if allowed is not last[token]:
                    last[token] = allowed
                    emit({"t": time.time(), "token": token, "allowed": allowed})
            await asyncio.sleep(ROUND)


if __name__ == "__main__":
    asyncio.run(worker(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
