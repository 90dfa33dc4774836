"""The differential corpus (tests/e2e/corpus/hostile.jsonl) through every proxy x app pair: real nginx
and Caddy running the documented snippets (docs/deploying/), the real gate, and real apps of other
languages (PHP, Express, a lenient Python router: tests/e2e/differential.py).

For every row and pair: whenever an app handles the request as a protected route with a token,
the gate checked that same token (the `X-Token-Fingerprint` the app received is that token's) and
its rules allow it from the client's address. One nginx and one Caddy (a server per app), a gate
per proxy flavour, three apps, all started once for the module. A row marked `known` fails today
because of the open issue it names: it is expected to fail (not strictly: a fix turns it green).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import SECRET
from tests.e2e.differential import APPS, Row, load_corpus, send_raw, violations
from tests.e2e.proxies import RESTRICTIONS, Caddy, Foreground, Gate, Nginx, gate_on, put_token
from tests.redis_servers import RedisProcess
from validator import Admin

ROWS = load_corpus()
PROXIES: dict[str, type[Nginx | Caddy]] = {"nginx": Nginx, "caddy": Caddy}


@pytest.fixture(scope="module")
def tokens(redis_server: RedisProcess) -> dict[str, str]:
    """`good` (listed for the client's address), `stolen` (listed for another address only), and
    their fingerprints as `fp_good`, `fp_stolen`."""
    found = {"good": f"tok-good-{uuid.uuid4().hex}", "stolen": f"tok-stolen-{uuid.uuid4().hex}"}
    put_token(redis_server.url, found["good"], RESTRICTIONS["client-ip"])
    put_token(redis_server.url, found["stolen"], RESTRICTIONS["elsewhere"])

    async def fingerprints() -> dict[str, str]:
        admin = Admin.from_url(redis_server.url, secret=SECRET)
        try:
            return {f"fp_{name}": admin.fingerprint(token) for name, token in found.items()}
        finally:
            await admin.close()

    return found | asyncio.run(fingerprints())


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, Foreground]]:
    started: dict[str, Foreground] = {}
    try:
        for name, kind in APPS.items():
            started[name] = kind()
            started[name].start()
        yield started
    finally:
        for app in started.values():
            app.cleanup()


@pytest.fixture(scope="module")
def proxies(redis_server: RedisProcess, apps: dict[str, Foreground]) -> Iterator[dict[str, dict[str, int]]]:
    """The port of each proxy x app pair: `proxies[proxy][app]`."""
    running: list[Foreground] = []
    ports: dict[str, dict[str, int]] = {}
    try:
        for name, kind in PROXIES.items():
            gate: Gate = gate_on(name, redis_server.url)
            running.append(gate)
            gate.start()
            app_ports = [app.port for app in apps.values()]
            proxy: Nginx | Caddy = kind(gate.port, *app_ports)
            running.append(proxy)
            proxy.start()
            ports[name] = dict(zip(apps, proxy.ports, strict=True))
        yield ports
    finally:
        for process in reversed(running):
            process.cleanup()


def _cases() -> Iterator[object]:
    for row in ROWS:
        marks = [pytest.mark.xfail(reason=row.known, strict=False)] if row.known else []
        for proxy in PROXIES:
            for app in APPS:
                yield pytest.param(proxy, app, row, marks=marks, id=f"{proxy}-{app}-{row.id}")


@pytest.mark.parametrize(("proxy", "app", "row"), list(_cases()))
def test_the_app_only_handles_tokens_the_gate_checked(
    proxies: dict[str, dict[str, int]], tokens: dict[str, str], proxy: str, app: str, row: Row
) -> None:
    target = row.target.format(**tokens)
    headers = tuple(line.format(**tokens) for line in row.headers)
    reply = send_raw(proxies[proxy][app], row.method, target, headers, version=row.version)
    fingerprints = {tokens["good"]: tokens["fp_good"], tokens["stolen"]: tokens["fp_stolen"]}
    wrong = violations(row, reply, fingerprints, {tokens["good"]})
    assert not wrong, (reply.status, reply.echo(), wrong)


def test_the_corpus_reaches_the_apps(proxies: dict[str, dict[str, int]], tokens: dict[str, str]) -> None:
    """The corpus is not vacuous: the lenient app routes as protected spellings that reach it only
    through the gate (a listed token: allowed), e.g. `/V1/data` and `/v1;x/data`."""
    for proxy in PROXIES:
        for target in ("/V1/data", "/v1;x/data", "/v1/data.", "//v1//data"):
            reply = send_raw(proxies[proxy]["python"], "GET", target, (f"X-API-Key: {tokens['good']}",))
            echo = reply.echo()
            assert echo is not None and echo["protected"], (proxy, target, reply)
            assert echo["fingerprint"] == tokens["fp_good"], (proxy, target, echo)
