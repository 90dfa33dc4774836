"""`RedactTokens`: the token query parameter never reaches a log line in clear (issue 12 item 13).

The end-to-end proof, through the demo under uvicorn, is tests/e2e/test_access_log.py.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import pytest
from uvicorn.logging import AccessFormatter

from validator.web.redaction import RedactTokens, uvicorn_log_config

pytestmark = [pytest.mark.timeout(10), pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")]

TOKEN = "tok_live_7c1d9e5b3a"

PATHS = [
    pytest.param(f"/v1/hello?api_key={TOKEN}", "/v1/hello?api_key=<redacted>", id="the only parameter"),
    pytest.param(f"/v1?a=1&api_key={TOKEN}&b=2", "/v1?a=1&api_key=<redacted>&b=2", id="among others"),
    pytest.param(f"/v1?api%5Fkey={TOKEN}", "/v1?api%5Fkey=<redacted>", id="name percent-encoded"),
    pytest.param(f"/v1?api_key={TOKEN}&api_key=x", "/v1?api_key=<redacted>&api_key=<redacted>", id="twice"),
    pytest.param(f'/v1?api_key={TOKEN}"#;x', "/v1?api_key=<redacted>", id="any visible character"),
    pytest.param(f"/v1?api_key={TOKEN[:4]}%20{TOKEN[4:]}", "/v1?api_key=<redacted>", id="value encoded"),
    pytest.param(f"/v1?api.key={TOKEN}", "/v1?api.key=<redacted>", id="PHP's api.key"),
    pytest.param(f"/v1?API_KEY={TOKEN}", "/v1?API_KEY=<redacted>", id="upper case"),
    pytest.param(f"/v1?api_key[]={TOKEN}", "/v1?api_key[]=<redacted>", id="array"),
    pytest.param(f"/v1?x=1;api_key={TOKEN}&b=2", "/v1?x=1;api_key=<redacted>&b=2", id="after a ;"),
    pytest.param(f"/v1?api_key={TOKEN};tail", "/v1?api_key=<redacted>", id="a ; in the value"),
    pytest.param("/v1?xapi_key=a&api_keyx=b", "/v1?xapi_key=a&api_keyx=b", id="other names kept"),
    pytest.param("/v1?api_key", "/v1?api_key", id="no value"),
    pytest.param("/v1/hello", "/v1/hello", id="no query"),
]


def access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's HTTP protocols log a request line."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "GET", path, "1.1", 200),
        None,
    )


@pytest.mark.parametrize(("path", "logged"), PATHS)
def test_access_log_line_is_redacted(path: str, logged: str) -> None:
    record = access_record(path)
    assert RedactTokens().filter(record) is True
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == f'127.0.0.1:50000 - "GET {logged} HTTP/1.1" 200 OK'
    assert TOKEN not in line


RECORDS = [
    pytest.param('%s - "WebSocket %s" [accepted]', ("127.0.0.1:1", f"/ws?api_key={TOKEN}"), id="WebSocket"),
    pytest.param(f"GET /v1?api_key={TOKEN} HTTP/1.1", None, id="in the message itself"),
    pytest.param("%(path)s", ({"path": f"/v1?api_key={TOKEN}"},), id="mapping arguments"),
]


@pytest.mark.parametrize(("msg", "args"), RECORDS)
def test_any_record_is_redacted(msg: str, args: Any) -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)
    RedactTokens().filter(record)
    assert TOKEN not in record.getMessage()
    assert "api_key=<redacted>" in record.getMessage()


def test_custom_names() -> None:
    record = access_record(f"/v1?key={TOKEN}&api_key=kept")
    RedactTokens(names=["key"], replacement="***").filter(record)
    assert record.getMessage() == '127.0.0.1:50000 - "GET /v1?key=***&api_key=kept HTTP/1.1" 200'


def test_uvicorn_log_config_filters_both_uvicorn_loggers() -> None:
    config = uvicorn_log_config(names=["key"])
    assert config["filters"]["redact_tokens"] == {
        "()": "validator.web.redaction.RedactTokens",
        "names": ["key"],
    }
    assert config["loggers"]["uvicorn.access"]["filters"] == ["redact_tokens"]
    assert config["loggers"]["uvicorn.error"]["filters"] == ["redact_tokens"]
    assert config["handlers"]["access"]["formatter"] == "access"  # uvicorn's own, kept


def test_uvicorn_log_config_builds_the_filter() -> None:
    configurator = logging.config.DictConfigurator(uvicorn_log_config())
    built = configurator.configure_custom(dict(uvicorn_log_config()["filters"]["redact_tokens"]))
    assert isinstance(built, RedactTokens)
    assert built.names == {"api_key"}
