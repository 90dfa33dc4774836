"""Issue 12 item 13: `python -m validator.web.demo --access-log` under a real uvicorn never writes a
token sent in the query in clear, while the requests that carried it were served."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.e2e.conftest import running

pytestmark = [pytest.mark.timeout(60), pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")]


def test_access_log_never_holds_a_query_token() -> None:
    # An unknown token is allowed (the validator's default), so each request is served; the
    # token is fresh, so it can appear in the demo's output only through a request line.
    token = f"tok-e2e-{uuid.uuid4().hex}"
    queries = [f"api_key={token}", f"a=1&api_key={token}&b=2", f"api%5Fkey={token}"]
    with running("--access-log") as demo:
        statuses = [httpx.get(f"{demo.url()}/v1/hello?{query}", timeout=10).status_code for query in queries]
        expected = [
            '"GET /v1/hello?api_key=<redacted> HTTP/1.1" 200',
            '"GET /v1/hello?a=1&api_key=<redacted>&b=2 HTTP/1.1" 200',
            '"GET /v1/hello?api%5Fkey=<redacted> HTTP/1.1" 200',
        ]
        # uvicorn logs (and its handler flushes) the line before it writes the status line, so
        # a received response has its line in the file already.
        output = demo.output()
    assert statuses == [200, 200, 200]
    for line in expected:
        assert line in output, output
    assert token not in output
