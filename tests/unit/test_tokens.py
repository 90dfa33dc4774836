"""docs/behaviour.md "Tokens are visible ASCII": the rule, and its refusal by `Validator.check`, `Admin`
and `validator-admin` (the middleware's side is in test_asgi_one_token.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from validator import Admin, Reason, Restrictions, Validator
from validator.errors import ConfigurationError, InvalidEntry
from validator.metrics import ValidatorCollector
from validator.model import MAX_TOKEN_LENGTH, is_token

pytestmark = [pytest.mark.timeout(60)]

RULE = "tokens are visible ASCII characters (! to ~), at most"

TOKENS = [
    pytest.param("a", id="one character"),
    pytest.param("tok_live-7c1d9e5b3a", id="letters, digits, - and _"),
    pytest.param("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", id="every punctuation mark"),
    pytest.param("x" * 512, id="the default maximum length"),
]

NOT_TOKENS = [
    pytest.param("", id="empty"),
    pytest.param("tök", id="non-ASCII letter"),
    pytest.param("t\u00f6k".encode().decode("latin-1"), id="UTF-8 read as latin-1"),
    pytest.param("\uff54\uff4f\uff4b", id="fullwidth letters"),
    pytest.param("a b", id="space inside"),
    pytest.param(" tok", id="leading space"),
    pytest.param("tok\n", id="trailing newline"),
    pytest.param("tok\r", id="trailing carriage return"),
    pytest.param("to\tk", id="tab"),
    pytest.param("tok\x00", id="NUL"),
    pytest.param("tok\x7f", id="DEL"),
    pytest.param("tok\u00a0", id="no-break space"),
    pytest.param("x" * 513, id="one over the default maximum length"),
]


@pytest.mark.promise("P-VISIBLE-ASCII")
@pytest.mark.parametrize("token", TOKENS)
def test_is_token(token: str) -> None:
    assert is_token(token)


@pytest.mark.promise("P-VISIBLE-ASCII")
@pytest.mark.parametrize("token", NOT_TOKENS)
def test_is_not_token(token: str) -> None:
    assert not is_token(token)


# --------------------------------------------------------------------------- Validator.check


@pytest.mark.promise("P-VISIBLE-ASCII")
@pytest.mark.promise("P-MALFORMED-TOKEN-DENIED")
@pytest.mark.parametrize("token", NOT_TOKENS)
async def test_check_denies_a_malformed_token_without_reading_the_store(token: str) -> None:
    # Nothing listens on port 1: a read would fail closed (StoreUnavailable) instead.
    validator = Validator.from_url("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2)
    try:
        result = await validator.check(token, client_ip="203.0.113.7", report_only=True)
    finally:
        await validator.close()
    assert (result.allowed, result.reported, result.reason) == (False, False, Reason.MALFORMED_TOKEN)
    assert (validator.stats.store_errors, validator.stats.failed_closed, len(validator.cache)) == (0, 0, 0)
    assert validator.stats.decisions[result] == 1


@pytest.mark.promise("P-MALFORMED-TOKEN-DENIED")
async def test_unknown_non_ascii_token_is_no_longer_allowed() -> None:
    async with Validator.from_url(f"memory://tokens-{uuid.uuid4()}", unknown_token="allow") as validator:
        unknown = await validator.check("unknown-token", client_ip="203.0.113.7")
        non_ascii = await validator.check("tök", client_ip="203.0.113.7")
    assert (unknown.allowed, unknown.reason) == (True, Reason.UNKNOWN_TOKEN)
    assert (non_ascii.allowed, non_ascii.reason) == (False, Reason.MALFORMED_TOKEN)


@pytest.mark.promise("P-VISIBLE-ASCII")
async def test_max_token_length_is_a_validator_setting() -> None:
    async with Validator.from_url(f"memory://tokens-{uuid.uuid4()}", max_token_length=4) as validator:
        assert (await validator.check("abcd")).reason is Reason.UNKNOWN_TOKEN
        assert (await validator.check("abcde")).reason is Reason.MALFORMED_TOKEN


@pytest.mark.promise("P-VISIBLE-ASCII")
@pytest.mark.parametrize("length", [0, MAX_TOKEN_LENGTH + 1])
def test_max_token_length_out_of_range(length: int) -> None:
    with pytest.raises(ConfigurationError, match="max_token_length"):
        Validator.from_url("memory://", max_token_length=length)


async def test_a_stored_token_is_checked_as_before() -> None:
    async with Validator.from_url(f"memory://tokens-{uuid.uuid4()}") as validator:
        await Admin(validator.store).put("~tok!", Restrictions(ip_enabled=True, ips=["203.0.113.7"]))
        listed = await validator.check("~tok!", client_ip="203.0.113.7")
        other = await validator.check("~tok!", client_ip="198.51.100.9")
    assert (listed.reason, other.reason) == (Reason.IP_LISTED, Reason.IP_NOT_LISTED)


@pytest.mark.promise("P-MALFORMED-TOKEN-DENIED")
async def test_metrics_count_malformed_tokens() -> None:
    async with Validator.from_url(f"memory://tokens-{uuid.uuid4()}") as validator:
        await validator.check("tök")
        samples = {
            (s.labels["outcome"], s.labels["reason"], s.labels["source"]): s.value
            for metric in ValidatorCollector(validator).collect()
            if metric.name == "token_access_decisions"
            for s in metric.samples
            if s.name.endswith("_total")
        }
    assert samples == {("denied", "malformed_token", "none"): 1}


# --------------------------------------------------------------------------- Admin


@pytest.mark.promise("P-VISIBLE-ASCII")
@pytest.mark.parametrize(
    "token", [p for p in NOT_TOKENS if p.id not in ("empty", "one over the default maximum length")]
)
async def test_admin_refuses_a_malformed_token(token: str) -> None:
    admin = Admin.from_url(f"memory://tokens-{uuid.uuid4()}")
    try:
        with pytest.raises(InvalidEntry, match=re.escape(RULE)) as refused:
            await admin.add_domains(token, ["example.com"])
    finally:
        await admin.close()
    assert token not in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.promise("P-VISIBLE-ASCII")
def test_admin_accepts_what_any_validator_may_be_set_to_check() -> None:
    admin = Admin.from_url("memory://")
    assert admin.token_hash("x" * MAX_TOKEN_LENGTH)
    with pytest.raises(InvalidEntry, match=re.escape(f"{RULE} {MAX_TOKEN_LENGTH} long")):
        admin.token_hash("x" * (MAX_TOKEN_LENGTH + 1))


# --------------------------------------------------------------------------- validator-admin


def admin_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALIDATOR_")}
    env |= {"VALIDATOR_STORE_URL": "memory://", "VALIDATOR_SECRET": "tokens-test"}
    return subprocess.run(
        [sys.executable, "-m", "validator", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.mark.promise("P-VISIBLE-ASCII")
@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        pytest.param(("show", "tök"), None, id="argument"),
        pytest.param(("domains", "add", "-", "example.com"), "tök\n", id="standard input"),
        pytest.param(("check", "a b", "--ip", "203.0.113.7"), None, id="check"),
    ],
)
def test_cli_refuses_a_malformed_token_with_one_line_and_exit_2(
    args: tuple[str, ...], stdin: str | None
) -> None:
    done = admin_cli(*args, stdin=stdin)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2, done.stderr
    assert errors == [
        f"validator-admin: error: {RULE} {MAX_TOKEN_LENGTH} long; this one is not (nothing was done)"
    ]
    assert "Traceback" not in done.stderr
    assert "tök" not in done.stdout + done.stderr
