"""A small HTTP/1.1 load generator, used by `middleware` when wrk is not installed.

`python -m benchmarks._loadgen URL SECONDS CONNECTIONS [HEADER ...]`: keeps CONNECTIONS
keep-alive connections busy with GET requests for SECONDS (uvloop, one request in flight per
connection, as wrk does) and prints {"requests": N, "seconds": S, "non_2xx": M}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import uvloop


async def _connection(host: str, port: int, request: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[0] += 1
            if not 200 <= status < 300:
                counts[1] += 1
    finally:
        writer.close()


async def main(url: str, seconds: float, connections: int, headers: list[str]) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", *headers, "", ""]
    request = "\r\n".join(lines).encode("latin-1")
    counts = [0, 0]
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_connection(host, port, request, deadline, counts) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    print(json.dumps({"requests": counts[0], "seconds": elapsed, "non_2xx": counts[1]}))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
