"""`python -m benchmarks._gate_server KIND PORT`: a gate process for `benchmarks gate`.

- `seeded`: the gate (`benchmarks.gate:seeded_gate`, nginx mode, memory store seeded with the
  demo's tokens) on the gate's own server, as `validator-gate` runs it;
- `instant`: the floor of the hop, a server that answers every request head with `200` and no
  body without reading it (uvloop, no parser, no check): what nginx's `auth_request` costs with a
  gate that answers instantly.
"""

from __future__ import annotations

import asyncio
import sys

_INSTANT = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-token-access: allowed\r\n\r\n"


class _Instant(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        heads = data.count(b"\r\n\r\n")  # auth subrequests carry no body
        if heads:
            self.transport.write(_INSTANT * heads)  # type: ignore[attr-defined]
        self.tail = data[data.rfind(b"\r\n\r\n") + 4 :] if heads else data[-4096:]


async def _instant(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Instant, "127.0.0.1", port, backlog=2048)
    await server.serve_forever()


def main(kind: str, port: int) -> int:
    import uvloop

    if kind == "instant":
        uvloop.run(_instant(port))
        return 0
    from benchmarks.gate import seeded_gate
    from validator.web.gate_server import serve

    return serve(seeded_gate, host="127.0.0.1", port=port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
