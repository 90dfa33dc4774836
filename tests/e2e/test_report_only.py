"""The report-only walkthrough over real HTTP: report, read would-be denials, fix, enforce, metrics.

The demo runs under uvicorn on its own redis-server; requests come from curl (with a trusted-proxy
X-Forwarded-For to present public addresses); the admin steps are `validator-admin` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import SECRET, DemoProcess, running, seed
from tests.e2e.test_demo import curl
from tests.redis_servers import RedisProcess
from validator import Restrictions

pytestmark = [pytest.mark.promise("P-REPORT-ONLY")]

TOKEN = "tok-e2e-report-do-not-print"
SERVER = "198.51.100.9"  # the back end this token's owner forgot to list
STRANGER = "192.0.2.1"


@pytest.fixture
def store() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def demo(store: RedisProcess) -> Iterator[DemoProcess]:
    seed(store.url, TOKEN, Restrictions(ip_enabled=True, ips=["203.0.113.7"]))
    with running("--store", store.url, "--trusted-proxy", "127.0.0.1", "--no-seed") as demo:
        yield demo


def admin(store: RedisProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VALIDATOR_STORE_URL": store.url, "VALIDATOR_SECRET": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "validator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def call(demo: DemoProcess, client_ip: str) -> int:
    status, _ = curl(demo.url() + "/v1/hello", f"X-API-Key: {TOKEN}", f"X-Forwarded-For: {client_ip}")
    return status


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll another process's state until `condition` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


def test_report_fix_enforce_and_watch_the_metrics(store: RedisProcess, demo: DemoProcess) -> None:
    assert call(demo, SERVER) == 403  # enforcing: the forgotten server is locked out

    assert admin(store, "mode", TOKEN, "report").returncode == 0
    eventually(lambda: call(demo, SERVER) == 200)  # report-only: let through ...

    def would_deny() -> list[dict[str, str]]:
        denials = json.loads(admin(store, "denials", TOKEN, "--json").stdout)["denials"]
        return [d for d in denials if d["mode"] == "report"]

    eventually(lambda: bool(would_deny()))  # ... and recorded as a would-be denial
    assert (would_deny()[0]["seen"], would_deny()[0]["reason"]) == (SERVER, "ip_not_listed")

    assert admin(store, "check", TOKEN, "--replay").returncode == 1
    assert admin(store, "ips", "add", TOKEN, SERVER).returncode == 0
    assert admin(store, "check", TOKEN, "--replay").returncode == 0
    assert admin(store, "mode", TOKEN, "enforce").returncode == 0
    eventually(lambda: call(demo, STRANGER) == 403)
    assert call(demo, SERVER) == 200

    status, metrics = curl(demo.url() + "/metrics")
    assert status == 200
    decisions = "token_access_decisions_total"
    for line in (
        f'{decisions}{{outcome="reported",reason="ip_not_listed",source="back_end"}}',
        f'{decisions}{{outcome="denied",reason="ip_not_listed",source="back_end"}}',
        f'{decisions}{{outcome="allowed",reason="ip_listed",source="back_end"}}',
        'token_access_denial_log_total{fate="recorded"}',
        "token_access_invalidation_connected 1.0",
    ):
        assert line in metrics
    assert "do-not-print" not in metrics
    assert "do-not-print" not in demo.output()
