"""`Access-Denied-Ref`: the reference a 403 carries, its format, and which replies carry one.

In process (memory:// store); tests/integration/test_denial_ref.py finds references in a real
Redis's denial log, from several validators, merged floods, the CLI and a Cluster.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.test_asgi import (
    FORBIDDEN_BODY,
    LISTED_IP,
    LISTED_ORIGIN,
    OTHER_IP,
    OTHER_ORIGIN,
    TOKENS,
    Recorder,
    Reply,
    call,
    key,
)
from validator import Admin, Reason, Validator
from validator.store.denial_refs import (
    AMBIGUOUS,
    DROPPED,
    LOGGED,
    MALFORMED_TOKEN,
    REFUSED,
    UNLOGGED,
    UNREADABLE,
    DenialRef,
    DenialRefs,
    request_tag,
)
from validator.web.middleware import TokenAccessMiddleware

pytestmark = [pytest.mark.promise("P-DENIAL-REF")]

REF = re.compile(rb"[0-9a-f]{32}")
HEADER = b"access-denied-ref"
HASH = "AbCdEfGhIjKlMnOpQrStUv"  # a token hash's shape: 22 base64url characters
AT = 1_796_112_000_123
REFS = DenialRefs(b"k" * 32)

# --------------------------------------------------------------------------- the format

# (kind, unknown-token log, time, token hash, tag): what a reference holds, and gives back.
ROUND_TRIPS = [
    pytest.param(LOGGED, False, AT, HASH, 0x1234, id="logged: a stored token's denial"),
    pytest.param(LOGGED, True, AT, HASH, 0xFFFF, id="logged: an unknown token's denial"),
    pytest.param(DROPPED, False, AT, HASH, 0, id="dropped: the queue was full"),
    pytest.param(DROPPED, True, AT, "", 0, id="dropped, no token at hand"),
    pytest.param(UNLOGGED, False, AT, "", 0, id="a validator without denial log"),
    pytest.param(REFUSED, False, AT, "", AMBIGUOUS, id="refused: ambiguous request"),
    pytest.param(REFUSED, False, AT, "", MALFORMED_TOKEN, id="refused: malformed token"),
    pytest.param(LOGGED, False, 0, "-_09azAZ", 1, id="the epoch, every kind of hash character"),
    pytest.param(LOGGED, False, 2**48 - 1, HASH, 0, id="the last millisecond 48 bits hold"),
]


@pytest.mark.parametrize(("kind", "unknown", "at_ms", "token_hash", "tag"), ROUND_TRIPS)
def test_a_reference_gives_back_what_it_holds(
    kind: int, unknown: bool, at_ms: int, token_hash: str, tag: int
) -> None:
    ref = REFS.encode(kind, unknown, at_ms, token_hash, tag)
    assert REF.fullmatch(ref)
    expected = DenialRef(kind, unknown, at_ms, token_hash[:7], tag)
    text = ref.decode()
    for written in (text, text.upper(), f" {text[:8]}-{text[8:16]} {text[16:]}\n"):
        assert REFS.decode(written) == expected


def _flipped(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


VALID = REFS.encode(LOGGED, False, AT, HASH, 7).decode()
NOT_REFERENCES = [
    pytest.param("", id="empty"),
    pytest.param(VALID[:-1], id="one digit short"),
    pytest.param(VALID + "0", id="one digit more"),
    pytest.param("g" + VALID[1:], id="not hexadecimal"),
    pytest.param("0" * 32, id="zeros"),
    pytest.param("f" * 32, id="all ones"),
    pytest.param(_flipped(VALID), id="one digit changed"),
    pytest.param(
        DenialRefs(b"another secret").encode(LOGGED, False, AT, HASH, 7).decode(), id="another secret"
    ),
    pytest.param("tok_live_" + "x" * 23, id="a token typed by mistake"),
]


@pytest.mark.parametrize("text", NOT_REFERENCES)
def test_what_is_not_a_reference_of_this_secret_is_refused(text: str) -> None:
    assert REFS.decode(text) is None


# Neighbours: two references that differ in one thing only. A caller holding both must learn
# nothing (not the time, not whether the token is stored): each digit changes as often as chance.
NEIGHBOURS = [
    pytest.param((LOGGED, False, AT, HASH, 7), (LOGGED, False, AT + 1, HASH, 7), id="a millisecond apart"),
    pytest.param((LOGGED, False, AT, HASH, 7), (LOGGED, True, AT, HASH, 7), id="stored or unknown token"),
    pytest.param((LOGGED, False, AT, HASH, 7), (LOGGED, False, AT, "B" + HASH[1:], 7), id="another token"),
    pytest.param((LOGGED, False, AT, HASH, 7), (LOGGED, False, AT, HASH, 6), id="another request"),
    pytest.param((LOGGED, False, AT, HASH, 7), (DROPPED, False, AT, HASH, 7), id="logged or dropped"),
]


@pytest.mark.parametrize(("one", "other"), NEIGHBOURS)
def test_neighbouring_references_share_nothing_visible(
    one: tuple[int, bool, int, str, int], other: tuple[int, bool, int, str, int]
) -> None:
    a, b = REFS.encode(*one), REFS.encode(*other)
    # 32 digits, each the same by chance 1 time in 16: 2 on average; 12 is far beyond chance.
    assert sum(x == y for x, y in zip(a, b, strict=True)) < 12


def test_a_repeated_denial_gets_its_reference_from_the_millisecond_memo() -> None:
    """A flood pays the cipher once per millisecond: the same input gives the very reference
    the cipher gives (fresh keys, no memo), any other input its own; the memo stays bounded."""
    refs, fresh = DenialRefs(b"m" * 32), DenialRefs(b"m" * 32)
    first = refs.encode(LOGGED, False, AT, HASH, 7)
    assert refs.encode(LOGGED, False, AT, HASH, 7) is first
    assert first == fresh._encipher(LOGGED, False, AT, HASH, 7)
    for n in range(1000):  # many requests within one millisecond, then the next one
        assert refs.encode(LOGGED, False, AT, HASH, n) == fresh._encipher(LOGGED, False, AT, HASH, n)
    assert len(refs._memo) <= 256
    assert refs.encode(LOGGED, False, AT + 1, HASH, 7) == fresh._encipher(LOGGED, False, AT + 1, HASH, 7)
    assert refs.encode(LOGGED, False, AT, HASH, 7) == first  # an older millisecond: enciphered again
    assert refs.decode(first.decode()) == DenialRef(LOGGED, False, AT, HASH[:7], 7)


# --------------------------------------------------------------------------- the middleware


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://ref-{uuid.uuid4()}", unknown_token="deny") as validator:
        admin = Admin(validator.store)
        for token, restrictions in TOKENS.items():
            await admin.put(token, restrictions)
        yield validator


def decoded(validator: Validator, reply: Reply) -> DenialRef:
    ref = reply.header(HEADER)
    assert ref is not None and REF.fullmatch(ref), ref
    found = validator.store.denial_refs.decode(ref.decode())
    assert found is not None
    return found


# (token, Origin or client address): requests the rules deny.
DENIED = [
    pytest.param("d", OTHER_ORIGIN, id="domain not listed"),
    pytest.param("d", LISTED_IP, id="back end with only domains"),
    pytest.param("i", LISTED_ORIGIN, id="front end with only IPs"),
    pytest.param("i", OTHER_IP, id="IP not listed"),
    pytest.param("d-empty", LISTED_ORIGIN, id="empty domain list"),
    pytest.param("unknown", OTHER_IP, id="unknown token, denied by setting"),
]


@pytest.mark.parametrize(("token", "where"), DENIED)
async def test_a_denial_by_the_rules_carries_the_reference_of_its_log_entry(
    validator: Validator, token: str, where: bytes | str
) -> None:
    headers = [key(token)]
    client = (OTHER_IP, 50000)
    if isinstance(where, bytes):
        headers.append((b"origin", where))
    else:
        client = (where, 50000)
    middleware = TokenAccessMiddleware(Recorder(), validator=validator)
    for _ in range(2):  # a miss, then a cache hit (`check_cached`)
        before = int(time.time() * 1000)
        reply = await call(middleware, headers, client=client)
        after = int(time.time() * 1000)
        assert (reply.status, reply.body) == (403, FORBIDDEN_BODY)
        ref = decoded(validator, reply)
        decision = reply.scope["state"]["token_access"]
        url = where.decode() if isinstance(where, bytes) else None
        ip = None if isinstance(where, bytes) else where
        assert ref == DenialRef(
            LOGGED,
            decision.reason is Reason.UNKNOWN_TOKEN,
            ref.at_ms,
            validator.store.token_hash(token)[:7],
            request_tag((id(decision), url, ip)),
        )
        assert before - 5 <= ref.at_ms <= after + 5


# Requests refused before any token is checked: a reference that says why, nothing logged.
REFUSED_REQUESTS = [
    pytest.param(
        [key("d"), (b"origin", OTHER_ORIGIN), (b"origin", LISTED_ORIGIN)], AMBIGUOUS, id="two Origins"
    ),
    pytest.param([key("d"), (b"authorization", b"Bearer di")], AMBIGUOUS, id="two different tokens"),
    pytest.param([(b"x-api-key", b"tok\x80en")], MALFORMED_TOKEN, id="a token byte outside ASCII"),
    pytest.param([(b"x-api-key", b"tok en")], MALFORMED_TOKEN, id="a space inside the token"),
]


@pytest.mark.parametrize(("headers", "why"), REFUSED_REQUESTS)
async def test_a_request_refused_before_any_check_carries_why(
    validator: Validator, headers: list[tuple[bytes, bytes]], why: int
) -> None:
    reply = await call(TokenAccessMiddleware(Recorder(), validator=validator), headers)
    assert (reply.status, reply.body) == (403, FORBIDDEN_BODY)
    ref = decoded(validator, reply)
    assert (ref.kind, ref.tag, ref.token, ref.unknown) == (REFUSED, why, "", False)
    assert validator.denial_log is not None and len(validator.denial_log) == 0


async def test_an_unreadable_request_carries_a_reference_too(validator: Validator) -> None:
    reply = await call(
        TokenAccessMiddleware(Recorder(), validator=validator), [key("d")], extra={"headers": None}
    )
    assert (reply.status, reply.body) == (403, FORBIDDEN_BODY)
    assert (decoded(validator, reply).kind, decoded(validator, reply).tag) == (REFUSED, UNREADABLE)


# Replies that are no denial carry no reference.
NO_REFERENCE = [
    pytest.param({}, [key("i")], (LISTED_IP, 1), 200, id="allowed"),
    pytest.param({}, [], (LISTED_IP, 1), 401, id="no token: 401"),
    pytest.param({"report_only": True}, [key("i")], (OTHER_IP, 1), 200, id="a would-be denial (report-only)"),
    pytest.param(
        {"cors": True}, [key("d"), (b"origin", LISTED_ORIGIN)], (OTHER_IP, 1), 200, id="allowed, CORS"
    ),
]


@pytest.mark.parametrize(("options", "headers", "client", "status"), NO_REFERENCE)
async def test_other_replies_carry_no_reference(
    validator: Validator,
    options: dict[str, Any],
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int],
    status: int,
) -> None:
    reply = await call(
        TokenAccessMiddleware(Recorder(), validator=validator, **options), headers, client=client
    )
    assert reply.status == status
    assert reply.header(HEADER) is None
    assert reply.header(b"access-control-expose-headers") is None


async def test_a_503_carries_no_reference() -> None:
    async with Validator.from_url("redis://127.0.0.1:1/0", timeout=0.2, connect_timeout=0.2) as validator:
        reply = await call(TokenAccessMiddleware(Recorder(), validator=validator), [key("d")])
    assert reply.status == 503
    assert reply.header(HEADER) is None


@pytest.mark.parametrize(
    ("cors", "exposed"), [(True, b"Access-Denied-Ref"), (False, None)], ids=["cors on", "cors off"]
)
@pytest.mark.promise("P-CORS-EXPOSES-REF")
async def test_page_script_may_read_the_reference_when_cors_is_on(
    validator: Validator, cors: bool, exposed: bytes | None
) -> None:
    middleware = TokenAccessMiddleware(Recorder(), validator=validator, cors=cors)
    reply = await call(middleware, [key("d"), (b"origin", OTHER_ORIGIN)])
    assert (reply.status, reply.body) == (403, FORBIDDEN_BODY)
    assert reply.header(b"access-control-expose-headers") == exposed
    assert reply.header(b"access-control-allow-origin") == (OTHER_ORIGIN if cors else None)
    assert decoded(validator, reply).kind == LOGGED


async def test_a_websocket_refusal_carries_the_reference_where_the_server_can_send_headers(
    validator: Validator,
) -> None:
    middleware = TokenAccessMiddleware(Recorder(), validator=validator)
    headers = [key("i"), (b"origin", OTHER_ORIGIN)]
    extensions: dict[str, Any] = {"extensions": {"websocket.http.response": {}}}
    reply = await call(middleware, headers, scope_type="websocket", extra=extensions)
    assert (reply.type, reply.status, reply.body) == ("websocket.http.response.start", 403, FORBIDDEN_BODY)
    assert decoded(validator, reply).kind == LOGGED
    # Without the extension the handshake is refused by a close: no header can be sent.
    closed = await call(middleware, headers, scope_type="websocket")
    assert closed.messages == [{"type": "websocket.close", "code": 1008}]


async def test_without_a_denial_log_the_reference_says_so() -> None:
    async with Validator.from_url(f"memory://ref-{uuid.uuid4()}", denial_log=False) as validator:
        await Admin(validator.store).put("d", TOKENS["d"])
        reply = await call(
            TokenAccessMiddleware(Recorder(), validator=validator), [key("d"), (b"origin", OTHER_ORIGIN)]
        )
    assert reply.status == 403
    assert decoded(validator, reply) == DenialRef(UNLOGGED, False, decoded(validator, reply).at_ms, "", 0)


async def test_a_denial_dropped_for_a_full_queue_gets_a_reference_that_says_so() -> None:
    # A queue of one and a log line rate that is spent at once: the first denial is queued, the
    # second dropped by `record`, the third counted by the check itself (`DenialLog.dropping`).
    async with Validator.from_url(
        f"memory://ref-{uuid.uuid4()}", denial_queue_size=1, denial_log_rate=0.001
    ) as validator:
        await Admin(validator.store).put("i", TOKENS["i"])
        middleware = TokenAccessMiddleware(Recorder(), validator=validator)
        assert (await call(middleware, [key("i")], client=(LISTED_IP, 1))).status == 200  # cached now
        log = validator.denial_log
        assert log is not None
        # Nothing below awaits anything that suspends: the writer cannot take the queued one.
        replies = [await call(middleware, [key("i")], client=(OTHER_IP, 1)) for _ in range(3)]
        kinds = [decoded(validator, reply).kind for reply in replies]
        assert (kinds, log.dropped, log.dropping) == ([LOGGED, DROPPED, DROPPED], 2, True)
        token = validator.store.token_hash("i")[:7]
        assert {decoded(validator, reply).token for reply in replies} == {token}


async def test_a_reference_finds_its_entry_in_the_log(validator: Validator) -> None:
    middleware = TokenAccessMiddleware(Recorder(), validator=validator)
    reply = await call(middleware, [key("d"), (b"origin", b"https://evil.test:8443")])
    assert validator.denial_log is not None
    await validator.denial_log.flush()
    found = await validator.store.find_denial(decoded(validator, reply))
    assert [(m.token_hash, m.entry["seen"], m.entry["origin"]) for m in found.matches] == [
        (validator.store.token_hash("d"), "evil.test", "https://evil.test:8443")
    ]
    assert json.loads(reply.body) == {"error": "Access denied. You don't have permission to access this."}
