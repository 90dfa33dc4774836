"""`Access-Denied-Ref` over real HTTP: the demo under uvicorn answers a 403 with the reference,
page script in headless Chromium can read it across origins (CORS exposes it), and
`validator-admin denials --ref` finds the denial with it, with no token."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest

from tests.e2e.chromium import Chromium
from tests.e2e.conftest import SECRET, DemoProcess
from tests.e2e.test_demo import FORBIDDEN, OTHER_IP, new_token
from tests.redis_servers import RedisProcess

pytestmark = [pytest.mark.promise("P-DENIAL-REF"), pytest.mark.promise("P-CORS-EXPOSES-REF")]

REF = re.compile(r"[0-9a-f]{32}")


def denial_of(redis_server: RedisProcess, ref: str) -> dict[str, object]:
    """`validator-admin --json denials --ref REF` against the demo's store (bounded in time)."""
    done = subprocess.run(
        [sys.executable, "-m", "validator", "--json", "denials", "--ref", ref],
        capture_output=True,
        text=True,
        timeout=60,
        env={"VALIDATOR_SECRET": SECRET, "VALIDATOR_STORE_URL": redis_server.url, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown: dict[str, object] = json.loads(done.stdout)
    return shown


def found(redis_server: RedisProcess, ref: str) -> dict[str, object]:
    """The one entry the reference names; the denial log writes in the background, so the
    lookup is retried (bounded) until it is there."""
    for _ in range(50):
        shown = denial_of(redis_server, ref)
        if shown["found"]:
            entries = shown["denials"]
            assert isinstance(entries, list) and len(entries) == 1, shown
            entry: dict[str, object] = entries[0]
            return entry
    raise AssertionError(f"{ref} not found: {shown}")


def test_a_browser_reads_the_reference_of_its_403_and_support_finds_the_denial(
    demo: DemoProcess, redis_server: RedisProcess, browser: Chromium
) -> None:
    token = new_token(redis_server, "D")
    # A cross-origin call from an unlisted page: the 403 is readable only through CORS.
    script = (
        f"fetch({json.dumps(demo.url('api.test') + '/v1/hello')}, "
        f"{{headers: {{'X-API-Key': {json.dumps(token)}}}}})"
        ".then(async r => ({status: r.status, ref: r.headers.get('Access-Denied-Ref'), "
        "body: await r.text()}))"
    )
    result = browser.run_on_page(demo.url("evil.test") + "/", script)
    assert (result["status"], json.loads(result["body"])) == (403, FORBIDDEN)
    assert REF.fullmatch(result["ref"] or ""), result
    entry = found(redis_server, result["ref"])
    assert (entry["source"], entry["seen"], entry["reason"]) == (
        "front_end",
        "evil.test",
        "domain_not_listed",
    )


def test_a_server_gets_the_reference_in_its_403_and_support_finds_the_denial(
    demo: DemoProcess, redis_server: RedisProcess
) -> None:
    token = new_token(redis_server, "I")
    reply = httpx.get(
        demo.url() + "/v1/hello", headers={"X-API-Key": token, "X-Forwarded-For": OTHER_IP}, timeout=10
    )
    assert (reply.status_code, reply.json()) == (403, FORBIDDEN)
    ref = reply.headers["access-denied-ref"]
    assert REF.fullmatch(ref)
    entry = found(redis_server, ref)
    assert (entry["source"], entry["seen"], entry["reason"]) == ("back_end", OTHER_IP, "ip_not_listed")
    assert token not in json.dumps(entry)
