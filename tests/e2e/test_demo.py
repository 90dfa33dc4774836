"""docs/behaviour.md's decision table over real HTTP: the demo under uvicorn, a real redis-server, curl for
back-end use and headless Chromium (page script calling the API with fetch()) for front-end use."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest

from tests.e2e.chromium import Chromium
from tests.e2e.conftest import DemoProcess, need, running, seed
from tests.redis_servers import RedisProcess, free_port
from validator import Restrictions

pytestmark = [pytest.mark.promise("P-DECISION-TABLE")]

FORBIDDEN = {"error": "Access denied. You don't have permission to access this."}
LISTED_DOMAIN = "app.test"
LISTED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"

# Each restriction keeps both lists filled, so only its switches differ.
RESTRICTIONS = {
    "off-off": Restrictions(domains=[LISTED_DOMAIN], ips=[LISTED_IP]),
    "D": Restrictions(domain_enabled=True, domains=[LISTED_DOMAIN], ips=[LISTED_IP]),
    "I": Restrictions(ip_enabled=True, domains=[LISTED_DOMAIN], ips=[LISTED_IP]),
    "DI": Restrictions(domain_enabled=True, ip_enabled=True, domains=[LISTED_DOMAIN], ips=[LISTED_IP]),
    "D-empty": Restrictions(domain_enabled=True, ips=[LISTED_IP]),
    "I-empty": Restrictions(ip_enabled=True, domains=[LISTED_DOMAIN]),
}


def new_token(redis_server: RedisProcess, restriction: str) -> str:
    token = f"tok-e2e-{uuid.uuid4().hex}"
    seed(redis_server.url, token, RESTRICTIONS[restriction])
    return token


def curl(url: str, *headers: str) -> tuple[int, str]:
    """One request with curl: (status, body)."""
    args = [need("curl"), "-sS", "--max-time", "10", "-w", "\n%{http_code}"]
    for header in headers:
        args += ["-H", header]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=15, check=True)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def body_of(status: int, body: str) -> dict[str, str]:
    decoded: dict[str, str] = json.loads(body)
    if status == 403:
        assert decoded == FORBIDDEN
    return decoded


# --------------------------------------------------------------------------- front end: Chromium

# (restriction, page host, API host, status). The page at http://<page>:PORT/ runs the demo's
# callApi(); with the same host the call is same-origin (the browser sends Referer), with
# another it is cross-origin (preflight, then Origin; the 403 is readable thanks to CORS).
FRONT_END = [
    pytest.param("off-off", "evil.test", "evil.test", 200, id="off-off: allowed"),
    pytest.param("D", "app.test", "app.test", 200, id="D: listed page, same origin"),
    pytest.param("D", "app.test", "api.test", 200, id="D: listed page, cross-origin"),
    pytest.param("D", "evil.test", "evil.test", 403, id="D: unlisted page, same origin"),
    pytest.param("D", "evil.test", "api.test", 403, id="D: unlisted page, cross-origin"),
    pytest.param("I", "app.test", "app.test", 403, id="I: browsers denied"),
    pytest.param("I", "app.test", "api.test", 403, id="I: browsers denied, cross-origin"),
    pytest.param("DI", "app.test", "api.test", 200, id="DI: listed page"),
    pytest.param("DI", "evil.test", "evil.test", 403, id="DI: unlisted page"),
    pytest.param("D-empty", "app.test", "app.test", 403, id="D with empty list: every page denied"),
]


@pytest.mark.parametrize(("restriction", "page", "api", "status"), FRONT_END)
def test_front_end_from_chromium(
    demo: DemoProcess,
    redis_server: RedisProcess,
    browser: Chromium,
    restriction: str,
    page: str,
    api: str,
    status: int,
) -> None:
    token = new_token(redis_server, restriction)
    result = browser.run_on_page(
        demo.url(page) + "/", f"callApi({json.dumps(token)}, {json.dumps(demo.url(api))})"
    )
    assert result["status"] == status, result
    body_of(status, result["body"])


# --------------------------------------------------------------------------- back end: curl

# (restriction, client address, status). curl's real address is 127.0.0.1, a trusted proxy of
# this demo, so X-Forwarded-For presents the client address to check.
BACK_END = [
    pytest.param("off-off", OTHER_IP, 200, id="off-off: allowed"),
    pytest.param("D", LISTED_IP, 403, id="D: servers denied"),
    pytest.param("I", LISTED_IP, 200, id="I: listed address"),
    pytest.param("I", OTHER_IP, 403, id="I: unlisted address"),
    pytest.param("DI", LISTED_IP, 200, id="DI: listed address"),
    pytest.param("DI", OTHER_IP, 403, id="DI: unlisted address"),
    pytest.param("I-empty", LISTED_IP, 403, id="I with empty list: every server denied"),
]


@pytest.mark.parametrize(("restriction", "client", "status"), BACK_END)
def test_back_end_from_curl(
    demo: DemoProcess, redis_server: RedisProcess, restriction: str, client: str, status: int
) -> None:
    token = new_token(redis_server, restriction)
    got, body = curl_request(demo, f"X-API-Key: {token}", f"X-Forwarded-For: {client}")
    assert got == status, body
    body_of(status, body)


def curl_request(demo: DemoProcess, *headers: str, query: str = "") -> tuple[int, str]:
    return curl(f"{demo.url()}/v1/hello{query}", *headers)


TOKEN_PLACES = [
    pytest.param(("Authorization: Bearer {token}",), "", id="bearer"),
    pytest.param(("X-API-Key: {token}",), "", id="x-api-key"),
    pytest.param((), "?api_key={token}", id="query"),
]


@pytest.mark.parametrize(("headers", "query"), TOKEN_PLACES)
def test_token_places(
    demo: DemoProcess, redis_server: RedisProcess, headers: tuple[str, ...], query: str
) -> None:
    token = new_token(redis_server, "I")
    sent = [h.format(token=token) for h in headers]
    assert (
        curl_request(demo, *sent, f"X-Forwarded-For: {LISTED_IP}", query=query.format(token=token))[0] == 200
    )
    assert (
        curl_request(demo, *sent, f"X-Forwarded-For: {OTHER_IP}", query=query.format(token=token))[0] == 403
    )


def test_no_token_is_401(demo: DemoProcess) -> None:
    status, body = curl_request(demo)
    assert (status, json.loads(body)) == (401, {"error": "API token required."})


def test_unknown_token_is_unrestricted(demo: DemoProcess, redis_server: RedisProcess) -> None:
    # Some other token written first: a store nobody ever wrote to may be taken for a wiped one.
    new_token(redis_server, "D")
    assert curl_request(demo, f"X-API-Key: never-stored-{uuid.uuid4().hex}")[0] == 200


def test_store_down_is_503() -> None:
    dead_store = f"redis://127.0.0.1:{free_port()}/0"
    with running("--store", dead_store, "--no-seed") as demo:
        status, body = curl_request(demo, "X-API-Key: any-token")
        assert (status, json.loads(body)) == (503, {"error": "Access check unavailable. Try again later."})


def test_quick_start_commands_do_what_they_say() -> None:
    """The demo with its default in-process store (no Redis) prints curl commands, each with the
    status it should get; paste each one and check."""
    with running() as demo:
        printed = re.findall(r"^\s+(curl .+?)\s+# (\d{3})", demo.output(), re.MULTILINE)
        assert len(printed) >= 5, demo.output()
        for command, expected in printed:
            pasted = f"{command} -sS --max-time 10 -o /dev/null -w '%{{http_code}}'"
            result = subprocess.run(
                ["bash", "-c", pasted], capture_output=True, text=True, timeout=15, check=True
            )
            assert result.stdout == expected, f"{command}: {result.stdout} {result.stderr}"


def test_what_chromium_sends(demo: DemoProcess, redis_server: RedisProcess, browser: Chromium) -> None:
    """Why the rows above are front-end requests: a same-origin fetch() carries Referer (no
    Origin); a cross-origin one is preceded by a tokenless preflight, then carries Origin."""
    token = new_token(redis_server, "D")
    api = demo.url("app.test") + "/v1/hello"
    call = f"callApi({json.dumps(token)})"
    result, sent = browser.run_on_page_watching(demo.url("app.test") + "/", call, watch=api)
    assert result["status"] == 200
    assert [(h.get("Origin"), h.get("Referer"), h.get("X-API-Key")) for h in sent] == [
        (None, demo.url("app.test") + "/", token)
    ]

    # An API host no other test calls from a page, so no cached preflight (max-age) hides it.
    api = demo.url("127.0.0.1") + "/v1/hello"
    call = f"callApi({json.dumps(token)}, {json.dumps(demo.url('127.0.0.1'))})"
    result, sent = browser.run_on_page_watching(demo.url("app.test") + "/", call, watch=api)
    assert result["status"] == 200
    preflight, actual = sorted(sent, key=lambda h: "Access-Control-Request-Method" not in h)
    assert (preflight["Access-Control-Request-Method"], preflight.get("X-API-Key")) == ("GET", None)
    assert (actual["Origin"], actual["X-API-Key"]) == (demo.url("app.test"), token)
