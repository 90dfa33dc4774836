"""The baseline of `import`: what a team would write to load the same file with plain redis-py.

`python -m benchmarks._plain_import URL SECRET PREFIX FILE`: reads the JSON Lines, hashes each
token with the same keyed hash, and writes the same keys (HSET meta, SADD domains, SADD IPs)
in pipelines of 500 records (on a Redis Cluster, `RedisCluster`'s pipeline, which sends each
node its share). No validation or normalisation, no Lua, no history, no limits.
Prints {"records": N, "seconds": S}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import msgspec

from benchmarks._targets import plain_client
from validator import Store

BATCH = 500


class Line(msgspec.Struct):
    token: str
    domain_enabled: bool = False
    ip_enabled: bool = False
    domains: list[str] = msgspec.field(default_factory=list)
    ips: list[str] = msgspec.field(default_factory=list)


def read(path: str) -> list[Line]:
    decoder = msgspec.json.Decoder(Line)
    return [decoder.decode(raw) for raw in Path(path).read_bytes().splitlines() if raw.strip()]


async def write(url: str, secret: str, prefix: str, lines: list[Line], started: float) -> None:
    store = Store.from_url(url, secret=secret, key_prefix=prefix)
    client = plain_client(url)
    for start in range(0, len(lines), BATCH):
        pipe = client.pipeline(transaction=False)
        for line in lines[start : start + BATCH]:
            meta, domains, ips = store.keys(store.token_hash(line.token))
            pipe.hset(meta, mapping={"d": int(line.domain_enabled), "i": int(line.ip_enabled), "v": 1})
            if line.domains:
                pipe.sadd(domains, *line.domains)
            if line.ips:
                pipe.sadd(ips, *line.ips)
        await pipe.execute()
    await client.aclose()
    await store.close()
    print(json.dumps({"records": len(lines), "seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    start = time.perf_counter()
    url, secret, prefix, path = sys.argv[1:5]
    asyncio.run(write(url, secret, prefix, read(path), start))
