"""Who changed what, without a Redis server: actor names, retention settings, and the time-ordered
merge of every token's history (`Store.history_since`) on the in-process `memory://` store."""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta

import pytest

from validator import Admin
from validator.admin.audit import checked_actor, default_actor, duration_seconds, retention_options
from validator.errors import ConfigurationError
from validator.store import Store

pytestmark = [pytest.mark.timeout(60), pytest.mark.promise("P-HISTORY")]


# ------------------------------------------------------------------------------ actor

ACCEPTED_ACTORS = [
    ("a plain name", "alice"),
    ("user at host", "alice@ops-1.example.com"),
    ("spaces and punctuation", "Alice Martin (on-call)"),
    ("non-ASCII letters", "José Müller"),
    ("a ticket reference", "deploy-bot/JIRA-1234"),
    ("exactly 128 characters", "a" * 128),
]

REFUSED_ACTORS = [
    ("empty", "", "empty"),
    ("blank", "   ", "empty"),
    ("129 characters", "a" * 129, "at most 128"),
    ("a newline (a forged second log line)", "alice\nbob", "control"),
    ("a terminal escape", "alice\x1b[2J", "control"),
    ("a NUL", "alice\x00", "control"),
    ("a tab", "alice\tbob", "control"),
    ("a line separator", "alice\u2028bob", "control"),
    ("a bidirectional override", "alice\u202eevil", "control"),
]


@pytest.mark.parametrize(("actor"), [a for _, a in ACCEPTED_ACTORS], ids=[n for n, _ in ACCEPTED_ACTORS])
def test_accepted_actors(actor: str) -> None:
    assert checked_actor(actor) == actor


@pytest.mark.parametrize(
    ("actor", "says"), [(a, s) for _, a, s in REFUSED_ACTORS], ids=[n for n, _, _ in REFUSED_ACTORS]
)
def test_refused_actors_name_the_rule_never_the_value(actor: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as refused:
        checked_actor(actor, "--actor")
    assert str(refused.value).startswith("--actor ")
    if actor.strip():
        assert actor not in str(refused.value)


def test_the_default_actor_is_the_environment_s_else_user_at_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VALIDATOR_ACTOR", "ci-pipeline")
    assert default_actor() == "ci-pipeline"
    monkeypatch.delenv("VALIDATOR_ACTOR")
    monkeypatch.setenv("LOGNAME", "carol")
    assert default_actor().startswith("carol@")
    monkeypatch.setenv("VALIDATOR_ACTOR", "bad\nactor")
    with pytest.raises(ConfigurationError, match="VALIDATOR_ACTOR"):
        default_actor()


def test_an_admin_refuses_a_bad_actor_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match="actor holds control"):
        Admin.from_url("redis://127.0.0.1:1/0", secret="s", actor="x\ry")


# ------------------------------------------------------------------------------ retention

RETENTIONS = [
    ("nothing given: the script's defaults", None, None, {}),
    ("a count", 200, None, {"history_length": 200}),
    ("an age as text", None, "90d", {"history_max_age_ms": 90 * 86_400_000}),
    ("an age in seconds", None, 1.5, {"history_max_age_ms": 1500}),
    ("an age as a timedelta", None, timedelta(hours=12), {"history_max_age_ms": 12 * 3_600_000}),
    ("both", 10, "2w", {"history_length": 10, "history_max_age_ms": 14 * 86_400_000}),
]

BAD_RETENTIONS = [
    ("no entries kept", 0, None, "between 1 and"),
    ("too many to trim in one script", 10_001, None, "between 1 and"),
    ("a negative age", None, -5, "positive"),
    ("a zero age", None, "0d", "positive"),
    ("an age without a unit", None, "90", "duration"),
    ("an unknown unit", None, "3y", "duration"),
    ("not a number", None, float("nan"), "positive"),
]


@pytest.mark.parametrize(
    ("length", "age", "options"), [r[1:] for r in RETENTIONS], ids=[r[0] for r in RETENTIONS]
)
def test_retention_options(
    length: int | None,
    age: float | str | timedelta | None,
    options: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VALIDATOR_HISTORY_LENGTH", raising=False)
    monkeypatch.delenv("VALIDATOR_HISTORY_MAX_AGE", raising=False)
    assert retention_options(length, age) == options


@pytest.mark.parametrize(
    ("length", "age", "says"), [r[1:] for r in BAD_RETENTIONS], ids=[r[0] for r in BAD_RETENTIONS]
)
def test_bad_retentions_are_refused(length: int | None, age: float | str | None, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        retention_options(length, age)


def test_retention_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VALIDATOR_HISTORY_LENGTH", "7")
    monkeypatch.setenv("VALIDATOR_HISTORY_MAX_AGE", "36h")
    assert retention_options(None, None) == {"history_length": 7, "history_max_age_ms": 36 * 3_600_000}
    assert retention_options(9, "1d") == {"history_length": 9, "history_max_age_ms": 86_400_000}
    monkeypatch.setenv("VALIDATOR_HISTORY_LENGTH", "lots")
    with pytest.raises(ConfigurationError, match="VALIDATOR_HISTORY_LENGTH must be a whole number"):
        retention_options(None, None)


def test_durations() -> None:
    assert duration_seconds("45s", "x") == 45
    assert duration_seconds("1.5h", "x") == 5400
    assert duration_seconds(" 2w ", "x") == 14 * 86400


# ------------------------------------------------------------------------------ the time-ordered merge


def fresh_store() -> Store:
    return Store.from_url(f"memory://{uuid.uuid4().hex}", secret="s")


async def given_histories(store: Store, histories: dict[str, list[int | str]]) -> None:
    """Write each token's history by hand, oldest first: an int is an entry recorded then (ms),
    a str is written as it is (an unreadable entry)."""
    for n, (token_hash, ats) in enumerate(histories.items()):
        for version, at in enumerate(ats, 1):
            raw = (
                at if isinstance(at, str) else json.dumps({"at": at, "op": "add", "version": version, "n": n})
            )
            await store.client.lpush(store.history_key(token_hash), raw)


async def merged(store: Store, since_ms: int = 0, **sizes: int) -> list[tuple[str, int]]:
    return [(token_hash, at) async for token_hash, at, _ in store.history_since(since_ms, **sizes)]


def random_histories(seed: int, tokens: int) -> dict[str, list[int | str]]:
    rng = random.Random(seed)
    histories: dict[str, list[int | str]] = {}
    for n in range(tokens):
        at = rng.randrange(0, 50)
        ats: list[int | str] = []
        for _ in range(rng.randrange(1, 40)):
            at += rng.choice((0, 0, 1, 2, 7, 30))  # ties within and across tokens
            ats.append(at)
        histories[f"{'h' * 20}{n:02d}"] = ats
    return histories


MERGES = [
    # (name, seed, tokens, page, batch, since)
    ("everything in one round", 1, 30, 64, 500, 0),
    ("one entry per page", 2, 30, 1, 500, 0),
    ("one token per round", 3, 30, 16, 1, 0),
    ("small pages, small rounds", 4, 50, 3, 4, 0),
    ("since in the middle", 5, 40, 5, 7, 60),
    ("since after everything", 6, 20, 4, 3, 10_000),
    ("a single token", 7, 1, 2, 2, 0),
]


@pytest.mark.parametrize(
    ("seed", "tokens", "page", "batch", "since"), [m[1:] for m in MERGES], ids=[m[0] for m in MERGES]
)
async def test_every_entry_since_once_in_time_order(
    seed: int, tokens: int, page: int, batch: int, since: int
) -> None:
    store = fresh_store()
    histories = random_histories(seed, tokens)
    await given_histories(store, histories)
    got = await merged(store, since, page=page, batch=batch)
    expected = sorted(
        (h, at) for h, ats in histories.items() for at in ats if isinstance(at, int) and at >= since
    )
    assert sorted(got) == expected
    assert [at for _, at in got] == sorted(at for _, at in got)
    for token_hash in histories:  # each token's own entries in the order recorded
        assert [at for h, at in got if h == token_hash] == [at for h, at in expected if h == token_hash]


async def test_unreadable_entries_and_foreign_keys_are_left_out() -> None:
    store = fresh_store()
    await given_histories(
        store, {"a" * 22: [5, "not json", 9, '{"op": "add"}', 12], "b" * 22: ["[]", 7], "c" * 22: ["{"]}
    )
    await store.client.set(store.history_key("d" * 22), "a string, not a list")
    await store.client.lpush(store.key_prefix + "{x}:other", json.dumps({"at": 1}))
    assert await merged(store, page=2, batch=2) == [
        ("a" * 22, 5),
        ("b" * 22, 7),
        ("a" * 22, 9),
        ("a" * 22, 12),
    ]


async def test_an_empty_store_has_no_history() -> None:
    assert await merged(fresh_store()) == []
