"""`validator-gate` as a real process (uvicorn, uvloop, httptools) on a free port, against a real
redis-server: the answers a proxy gets, an admin change reaching it, a dead store, refusals to
start, `--workers`, and what it logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import stop_process, wait_answering
from tests.redis_servers import free_port
from validator import Admin, Restrictions
from validator.store import fingerprint

SECRET = "gate-secret"
LISTED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
FORBIDDEN_BODY = b'{"error": "Access denied. You don\'t have permission to access this."}'
UNAUTHORIZED_BODY = b'{"error": "API token required."}'
UNAVAILABLE_BODY = b'{"error": "Access check unavailable. Try again later."}'
SCRIPT = Path(sys.executable).with_name("validator-gate")


class GateProcess:
    """One `validator-gate` on a free loopback port; ready when it answers HTTP."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, module: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "validator.web.gate"] if module else [str(SCRIPT)]
        self.log = Path(tempfile.mkstemp(prefix="tav-gate-", suffix=".log")[1])
        environment = {**os.environ, "VALIDATOR_SECRET": SECRET, **(env or {})}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port), *args],
                stdout=log,
                stderr=log,
                env=environment,
            )

    def wait(self, timeout: float = 20.0) -> None:
        # Any answer: uvicorn accepts connections once the lifespan start-up is done.
        url = self.url + "/healthz"
        wait_answering(url, self.process, "the gate", self.output, timeout=timeout, status=None)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.unlink(missing_ok=True)


@contextlib.contextmanager
def running(*args: str, env: dict[str, str] | None = None, module: bool = False) -> Iterator[GateProcess]:
    gate = GateProcess(*args, env=env, module=module)
    try:
        gate.wait()
        yield gate
    finally:
        gate.stop()


def store(url: str, **tokens: Restrictions) -> None:
    async def put() -> None:
        admin = Admin.from_url(url, secret=SECRET)
        try:
            await admin.init()
            for token, restrictions in tokens.items():
                await admin.put(token, restrictions)
        finally:
            await admin.close()

    asyncio.run(put())


def nginx_asks(gate: GateProcess, uri: str, client: str, **headers: str) -> httpx.Response:
    """The request nginx's `auth_request` makes for a client's `GET uri` (docs/deploying.md)."""
    sent = {"X-Original-URI": uri, "X-Original-Method": "GET", "X-Real-IP": client}
    return httpx.get(gate.url + "/check", headers={**sent, **headers}, timeout=5.0)


@pytest.fixture
def nginx_gate(redis_url: str) -> Iterator[GateProcess]:
    store(
        redis_url,
        i=Restrictions(ip_enabled=True, ips=[LISTED_IP]),
        d=Restrictions(domain_enabled=True, domains=["app.example.com"]),
    )
    with running("--proxy", "nginx", "--trusted-proxies", "127.0.0.1", "--store", redis_url) as gate:
        assert (httpx.get(gate.url + "/healthz").status_code, httpx.get(gate.url + "/healthz").text) == (
            200,
            "ok",
        )
        yield gate


# (original URI, client address, headers, status, body)
ANSWERS = [
    pytest.param("/v1", LISTED_IP, {"X-API-Key": "i"}, 200, b"", id="IP listed"),
    pytest.param("/v1?api_key=i", LISTED_IP, {}, 200, b"", id="token in the original query"),
    pytest.param("/v1", OTHER_IP, {"X-API-Key": "i"}, 403, FORBIDDEN_BODY, id="IP not listed"),
    pytest.param(
        "/v1", OTHER_IP, {"X-API-Key": "d", "Origin": "https://app.example.com"}, 200, b"", id="domain listed"
    ),
    pytest.param("/v1", LISTED_IP, {"X-API-Key": "d"}, 403, FORBIDDEN_BODY, id="domain token from a server"),
    pytest.param("/v1", LISTED_IP, {}, 401, UNAUTHORIZED_BODY, id="no token"),
    pytest.param("/v1?api_key=d", LISTED_IP, {"X-API-Key": "i"}, 403, FORBIDDEN_BODY, id="decoy"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("uri", "client", "headers", "status", "body"), ANSWERS)
def test_answers(
    nginx_gate: GateProcess, uri: str, client: str, headers: dict[str, str], status: int, body: bytes
) -> None:
    reply = nginx_asks(nginx_gate, uri, client, **headers)
    assert (reply.status_code, reply.content) == (status, body)
    if status == 200:
        assert reply.headers["x-token-access"] == "allowed"
        token = headers.get("X-API-Key", "i")
        assert reply.headers["x-token-fingerprint"] == fingerprint(_hash(token))
    else:
        assert reply.headers["content-type"] == "application/json"
        assert "x-token-access" not in reply.headers
    assert "server" not in reply.headers


def _hash(token: str) -> str:
    from validator.store import Store

    return Store.from_url("memory://", secret=SECRET).token_hash(token)


@pytest.mark.timeout(60)
def test_an_admin_change_reaches_the_gate(nginx_gate: GateProcess, redis_url: str) -> None:
    assert nginx_asks(nginx_gate, "/v1", LISTED_IP, **{"X-API-Key": "i"}).status_code == 200
    store(redis_url, i=Restrictions(ip_enabled=True, ips=["192.0.2.1"]))
    # Invalidation, not expiry: the gate's cache entry is dropped as soon as Redis says so.
    deadline = time.monotonic() + 5.0
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = nginx_asks(nginx_gate, "/v1", LISTED_IP, **{"X-API-Key": "i"}).status_code
    assert status == 403


@pytest.mark.timeout(60)
def test_a_dead_store_fails_closed() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with running("--proxy", "nginx", "--trusted-proxies", "127.0.0.1", "--store", dead) as gate:
        reply = nginx_asks(gate, "/v1", LISTED_IP, **{"X-API-Key": "i"})
        assert (reply.status_code, reply.content) == (503, UNAVAILABLE_BODY)
        assert httpx.get(gate.url + "/healthz").text == "ok"


@pytest.mark.timeout(60)
def test_an_untrusted_peer_is_refused_and_logged_once(redis_url: str) -> None:
    store(redis_url, open=Restrictions())
    with running("--proxy", "nginx", "--trusted-proxies", "10.0.0.2", "--store", redis_url) as gate:
        for _ in range(3):
            reply = nginx_asks(gate, "/v1", LISTED_IP, **{"X-API-Key": "open"})
            assert (reply.status_code, reply.content) == (403, FORBIDDEN_BODY)
        output = gate.output()
    # The readiness probe's /healthz was refused too: one line for all of them.
    assert output.count("not in the trusted proxies") == 1, output


@pytest.mark.timeout(60)
def test_envoy_mode_with_access_log_redacts_tokens_and_runs_as_a_module(redis_url: str) -> None:
    store(redis_url, open=Restrictions())
    args = ("--proxy", "envoy", "--trusted-proxies", "127.0.0.1", "--store", redis_url, "--access-log")
    with running(*args, module=True) as gate:
        headers = {"X-Forwarded-For": f"{LISTED_IP},127.0.0.1"}
        reply = httpx.get(gate.url + "/authz/v1/hello?api_key=open", headers=headers)
        assert (reply.status_code, reply.headers["x-token-access"]) == (200, "allowed")
        reply = httpx.get(gate.url + "/authz/v1/hello?api_key=not-stored-secret-xyz")
        assert reply.status_code == 403  # no X-Forwarded-For: not understood
        output = gate.output()
    assert "GET /authz/v1/hello?api_key=<redacted>" in output, output
    assert "not-stored-secret-xyz" not in output and "api_key=open" not in output


@pytest.mark.timeout(90)
def test_workers(nginx_gate: GateProcess, redis_url: str) -> None:
    args = ("--proxy", "nginx", "--trusted-proxies", "127.0.0.1", "--store", redis_url, "--workers", "2")
    with running(*args) as gate:
        for _ in range(4):
            assert nginx_asks(gate, "/v1", LISTED_IP, **{"X-API-Key": "i"}).status_code == 200
            assert nginx_asks(gate, "/v1", OTHER_IP, **{"X-API-Key": "i"}).status_code == 403


# (arguments, environment, what stderr says)
REFUSALS = [
    pytest.param(
        ["--proxy", "nginx", "--store", "redis://x"], {}, "--trusted-proxies is required", id="no proxies"
    ),
    pytest.param(
        ["--proxy", "nginx", "--trusted-proxies", "10.0.0.0/33", "--store", "redis://127.0.0.1:1/0"],
        {},
        "trusted proxy '10.0.0.0/33' is not an IP address",
        id="bad proxy address",
    ),
    pytest.param(["--proxy", "nginx", "--trusted-proxies", "10.0.0.1"], {}, "no store given", id="no store"),
    pytest.param(
        ["--trusted-proxies", "10.0.0.1"],
        {},
        "the following arguments are required: --proxy",
        id="no --proxy",
    ),
    pytest.param(["--proxy", "haproxy"], {}, "invalid choice: 'haproxy'", id="unknown proxy"),
    pytest.param(
        ["--proxy", "nginx", "--store", "redis://127.0.0.1:1/0"],
        {"VALIDATOR_GATE_TRUSTED_PROXIES": "nonsense"},
        "trusted proxy 'nonsense' is not an IP address",
        id="proxies from the environment",
    ),
    pytest.param(
        ["--proxy", "nginx", "--trusted-proxies", "10.0.0.1", "--store", "mysql://x"],
        {},
        "mysql",
        id="bad store URL",
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "env", "message"), REFUSALS)
def test_refuses_to_start(args: list[str], env: dict[str, str], message: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VALIDATOR_")}
    done = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**environment, "VALIDATOR_SECRET": SECRET, **env},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("validator-gate: error: ")
    assert message in lines[0]
    assert "Traceback" not in done.stderr
