"""Each option is defined once and reaches every face that takes it: the HTTP options the
middleware, the FastAPI dependency and `validator-gate`'s command line; the store options the three
`from_url`s. These tests iterate the records, so an option added to a record is tried here too
(its sample value below is the one thing to add)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from validator import Admin, ConfigurationError, Validator
from validator.admin.cli import _admin, build_parser
from validator.admin.cli.output import Output
from validator.options import Field, fields
from validator.store import Store, StoreOptions
from validator.web.fastapi import TokenAccess
from validator.web.gate import _from_settings, _parser, _settings
from validator.web.middleware import TokenAccessMiddleware
from validator.web.options import FastApiOptions, GateOptions, HttpOptions, MiddlewareOptions
from validator.web.types import Receive, Scope, Send

# A value other than the default, valid for every face that takes the option.
HTTP_SAMPLES: dict[str, Any] = {
    "token_sources": ("bearer", "query"),
    "token_header": "X-Token",
    "token_query": "token",
    "max_token_length": 100,
    "trusted_proxies": ("10.0.0.0/8",),
    "report_only": True,
    "cors": True,
    "require_token": False,
    "proxy_header": "x-real-ip",
    "preflight": "answer",
    "cors_allow_methods": ("GET", "POST"),
    "cors_allow_headers": ("X-Token",),
    "cors_max_age": 60,
    "exempt": ("/healthz",),
    "openapi": False,
    "proxy": "caddy",
    "client_header": "x-real-ip",
}
STORE_SAMPLES: dict[str, Any] = {
    "secret": "another secret",
    "key_prefix": "other:",
    "limit": 7,
    "timeout": 0.25,
    "connect_timeout": 0.75,
    "write_retry": 1.5,
}
FACES = {"middleware": MiddlewareOptions, "fastapi": FastApiOptions, "gate": GateOptions}
# A URL nothing listens on: its clients connect only when used, and these tests use none.
NOWHERE = "redis://127.0.0.1:1/0"


def names(record: type[Any]) -> set[str]:
    return {f.name for f in fields(record)}


def http_cases(face: str) -> list[Any]:
    """(field, whether `face` takes it) for every HTTP option."""
    return [pytest.param(f, f.name in names(FACES[face]), id=f.name) for f in fields(HttpOptions)]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    return None


@pytest.fixture
async def validator() -> AsyncIterator[Validator]:
    async with Validator.from_url(f"memory://options-{uuid.uuid4()}") as v:
        yield v


def test_every_option_has_a_sample_and_every_face_a_record() -> None:
    assert set(HTTP_SAMPLES) == names(HttpOptions)
    assert set(STORE_SAMPLES) == names(StoreOptions)
    assert names(HttpOptions) == set().union(*(names(record) for record in FACES.values()))


def test_the_records_say_a_default_and_a_help_for_each_option() -> None:
    for f in (*fields(HttpOptions), *fields(StoreOptions)):
        assert f.option.help, f.name
        assert f.option.default != HTTP_SAMPLES.get(f.name, STORE_SAMPLES.get(f.name)), f.name


# --------------------------------------------------------------------------- HTTP options


@pytest.mark.parametrize(("field", "taken"), http_cases("middleware"))
def test_the_middleware_takes_its_options(validator: Validator, field: Field, taken: bool) -> None:
    option = {field.name: HTTP_SAMPLES[field.name]}
    if taken:
        TokenAccessMiddleware(app, validator=validator, **option)
    else:
        with pytest.raises(ConfigurationError, match=f"TokenAccessMiddleware has no option {field.name}"):
            TokenAccessMiddleware(app, validator=validator, **option)


@pytest.mark.parametrize(("field", "taken"), http_cases("fastapi"))
def test_the_fastapi_dependency_takes_its_options(validator: Validator, field: Field, taken: bool) -> None:
    option = {field.name: HTTP_SAMPLES[field.name]}
    if taken:
        TokenAccess(validator, **option)
    else:
        with pytest.raises(ConfigurationError, match=f"TokenAccess has no option {field.name}"):
            TokenAccess(validator, **option)


def command_line(field: Field, value: Any) -> list[str]:
    if value is True:
        return [field.flags[0]]
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    return [field.flags[0], text]


@pytest.mark.parametrize(("field", "taken"), http_cases("gate"))
def test_the_gate_command_line_takes_its_options(field: Field, taken: bool) -> None:
    required = ["--proxy", "nginx", "--trusted-proxies", "192.0.2.1", "--store", "memory://gate-options"]
    flag = field.flags[0]
    assert (flag in _parser()._option_string_actions) is taken
    if not taken:
        return
    args = _parser().parse_args([*required, *command_line(field, HTTP_SAMPLES[field.name])])
    settings = _settings(args)
    value = HTTP_SAMPLES[field.name]
    assert settings[field.name] == (",".join(value) if field.name == "trusted_proxies" else value)
    _from_settings(settings)  # the gate of those settings builds


def test_the_gate_command_line_says_each_options_help() -> None:
    actions = _parser()._option_string_actions
    for f in fields(GateOptions):
        assert (actions[f.flags[0]].help or "").startswith(f.option.help)


def test_a_gate_command_line_without_its_options_gets_the_records_defaults() -> None:
    args = _parser().parse_args(
        ["--proxy", "envoy", "--trusted-proxies", "192.0.2.1", "--store", "memory://"]
    )
    assert _settings(args) == {"store": "memory://", "proxy": "envoy", "trusted_proxies": "192.0.2.1"}


# --------------------------------------------------------------------------- store options


def observed(store: Store, name: str) -> Any:
    """What a store shows of the option `name`."""
    if name == "secret":
        return store.token_hash("t")
    if name in ("timeout", "connect_timeout"):
        assert isinstance(store.client, Redis), "a one-server URL makes a one-server client"
        kwargs = store.client.connection_pool.connection_kwargs
        return kwargs["socket_timeout" if name == "timeout" else "socket_connect_timeout"]
    return getattr(store, name)


async def store_of(face: str, **options: Any) -> Store:
    if face == "Store":
        return Store.from_url(NOWHERE, **options)
    if face == "Validator":
        return Validator.from_url(NOWHERE, **options).store
    return Admin.from_url(NOWHERE, **options).store


@pytest.mark.parametrize("face", ["Store", "Validator", "Admin"])
@pytest.mark.parametrize("name", sorted(STORE_SAMPLES))
async def test_every_from_url_takes_every_store_option(face: str, name: str) -> None:
    plain = await store_of(face, secret="s")
    given = await store_of(face, **{"secret": "s", name: STORE_SAMPLES[name]})
    try:
        expected = STORE_SAMPLES[name] if name != "secret" else observed(given, name)
        assert observed(given, name) == expected
        assert observed(given, name) != observed(plain, name)
    finally:
        await plain.close()
        await given.close()


@pytest.mark.parametrize(("face", "wait"), [("Store", 0.5), ("Validator", 0.5), ("Admin", 2.0)])
async def test_the_admin_role_waits_longer_on_the_store(face: str, wait: float) -> None:
    store = await store_of(face, secret="s")
    try:
        assert observed(store, "timeout") == observed(store, "connect_timeout") == wait
    finally:
        await store.close()


@pytest.mark.parametrize("face", ["Store", "Validator", "Admin"])
async def test_an_unknown_keyword_is_refused(face: str) -> None:
    with pytest.raises(ConfigurationError, match="key_prefx"):
        await store_of(face, key_prefx="typo:")


@pytest.mark.parametrize("options", [{"timeout": 0}, {"connect_timeout": -1}, {"write_retry": -1}])
async def test_bad_store_options_are_refused(options: dict[str, Any]) -> None:
    for face in ("Store", "Validator", "Admin"):
        with pytest.raises(ConfigurationError):
            await store_of(face, **options)


async def test_the_admin_command_line_takes_its_store_options() -> None:
    flags = ["--key-prefix", "other:", "--limit", "7", "--write-retry", "1.5", "--timeout", "0.25"]
    args = build_parser().parse_args(["--store", NOWHERE, "--secret", "s", *flags, "show", "t"])
    store = _admin(args, Output(as_json=True)).store
    try:
        assert (store.key_prefix, store.limit, store.write_retry) == ("other:", 7, 1.5)
        assert observed(store, "timeout") == observed(store, "connect_timeout") == 0.25
    finally:
        await store.close()
    plain = _admin(build_parser().parse_args(["--store", NOWHERE, "show", "t"]), Output(as_json=True)).store
    try:
        assert (plain.key_prefix, plain.limit, plain.write_retry) == ("tav:", 5, 5.0)
        assert observed(plain, "timeout") == 5.0  # the admin-cli role's
    finally:
        await plain.close()
