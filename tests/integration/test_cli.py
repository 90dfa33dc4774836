"""`validator-admin` as a user runs it: every command and every error path, against a real redis-server.

Exit codes: 0 done (check: allowed), 1 refused input (check: denied), 2 usage, 3 store unreachable.
Set-up and inspection go through the Python API in process (`Direct`); what is under test always
runs as `python -m validator` in a subprocess.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from tests.integration.test_cli_support import SECRET, Cli, Direct, command, environment
from tests.redis_servers import free_port
from validator import Restrictions, StoreUnavailable, Validator

TOKEN = "tok_live_7c1d9e5b3a_do_not_print"


# ------------------------------------------------------------------------------ help


def test_help_names_every_command_the_environment_and_the_exit_codes(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for name in (
        "init",
        "show",
        "domains",
        "ips",
        "enable",
        "disable",
        "delete",
        "check",
        "import",
        "export",
    ):
        assert name in result.out
    assert "history" in result.out
    assert "VALIDATOR_STORE_URL" in result.out
    assert "VALIDATOR_SECRET" in result.out
    for code in ("0  done", "1  refused", "2  usage", "3  the store is unreachable"):
        assert code in result.out


def test_the_console_script_is_the_same_program(cli: Cli) -> None:
    script = Path(sys.executable).with_name("validator-admin")
    if not script.exists():
        pytest.skip("the project is not installed with its console script here")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stdout == cli("--help").out


# ------------------------------------------------------------------------------ show


def test_show_unknown_token(cli: Cli) -> None:
    data = cli("show", TOKEN, "--json").json()
    assert (data["stored"], data["use"], data["domains"], data["ips"]) == (False, "unrestricted", [], [])
    assert "nothing stored" in cli("show", TOKEN).out


def test_show_plain_text_when_piped(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"], on=["domain"])
    result = cli("show", TOKEN)
    assert result.code == 0
    lines = result.out.splitlines()
    assert "front end only" in lines[0]
    assert "version 1" in lines[0]
    assert [line.split() for line in lines[1:]] == [
        ["restriction", "switch", "entries"],
        ["domain", "on", "app.example.com"],
        ["ip", "off", "-"],
    ]
    assert "\x1b" not in result.out  # no terminal escapes in a pipe


@pytest.mark.promise("P-ADMIN-TRUTH")
@pytest.mark.parametrize(
    ("on", "mode"),
    [
        pytest.param((), "unrestricted", id="neither"),
        pytest.param(("domain",), "front_end_only", id="domain"),
        pytest.param(("ip",), "back_end_only", id="ip"),
        pytest.param(("domain", "ip"), "front_and_back_end", id="both"),
    ],
)
def test_show_mode_follows_the_switches(cli: Cli, store: Direct, on: tuple[str, ...], mode: str) -> None:
    store.given(TOKEN, domains=["app.example.com"], ips=["203.0.113.7"], on=on)
    data = cli("show", TOKEN, "--json").json()
    assert data["use"] == mode
    assert (data["domain_enabled"], data["ip_enabled"]) == ("domain" in on, "ip" in on)
    assert (data["domains"], data["ips"], data["version"]) == (["app.example.com"], ["203.0.113.7"], 1)


def test_show_warns_about_an_enabled_empty_list(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, on=["ip"])
    result = cli("show", TOKEN, "--json")
    assert result.json()["warnings"] == [
        "the IP restriction is on with an empty list: every back-end request is denied"
    ]
    assert "every back-end request is denied" in cli("show", TOKEN).err


def test_show_draws_a_table_on_a_terminal(initialised: str) -> None:
    drawn = run_on_terminal(["show", TOKEN], initialised, stream="stdout")
    assert "┃" in drawn or "│" in drawn
    assert "restriction" in drawn


def test_check_draws_entries_as_text_on_a_terminal(store: Direct, redis_url: str) -> None:
    store.given(TOKEN, domains=["https://app.example.com"], on=["domain"])
    drawn = run_on_terminal(
        ["check", TOKEN, "--origin", "https://app.example.com"], redis_url, stream="stdout"
    )
    assert "domain on [https://app.example.com]" in drawn  # not taken for rich markup


def test_options_work_before_and_after_the_command(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    assert cli("--json", "show", TOKEN).json() == cli("show", TOKEN, "--json").json()


# ------------------------------------------------------------------------------ lists


@pytest.mark.promise("P-STORED-FORM-TOLD")
@pytest.mark.promise("P-DOMAIN-ENTRIES")
@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        pytest.param("https://App.example.com/login?next=/", "app.example.com", id="url keeps its host"),
        pytest.param("https://App.example.com", "https://app.example.com", id="origin"),
        pytest.param("*.Example.com", "*.example.com", id="wildcard"),
        pytest.param("localhost:3000", "localhost:3000", id="port"),
        pytest.param("http://localhost:*", "http://localhost:*", id="scheme any port"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="idn"),
    ],
)
def test_domains_add_prints_the_stored_form(cli: Cli, store: Direct, typed: str, stored: str) -> None:
    result = cli("domains", "add", TOKEN, typed)
    assert result.code == 0, result.err
    assert f"1 of 5: {stored}" in result.out
    if typed != stored:
        assert f"stored '{stored}'" in result.out
    assert store.get(TOKEN) == Restrictions(domains=[stored], version=1)


@pytest.mark.promise("P-STORED-FORM-TOLD")
@pytest.mark.promise("P-IP-ENTRIES")
@pytest.mark.promise("P-ONE-ADDRESS-ONE-ENTRY")
@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        pytest.param("2001:DB8::0:1", "2001:db8::1", id="v6"),
        pytest.param("::ffff:203.0.113.9", "203.0.113.9", id="v4 mapped"),
        pytest.param("198.51.100.0/24", "198.51.100.0/24", id="network"),
    ],
)
def test_ips_add_prints_the_stored_form(cli: Cli, store: Direct, typed: str, stored: str) -> None:
    result = cli("ips", "add", TOKEN, typed)
    assert result.code == 0, result.err
    assert f"1 of 5: {stored}" in result.out
    assert store.get(TOKEN) == Restrictions(ips=[stored], version=1)


LIST_CHANGES = [
    # (command, stored before, arguments, stored after)
    pytest.param("domains", ["a.test"], ("add", "b.test", "c.test"), ["a.test", "b.test", "c.test"],
                 id="domains add"),
    pytest.param("domains", ["a.test", "b.test"], ("remove", "a.test"), ["b.test"], id="domains remove"),
    pytest.param("domains", ["a.test"], ("set", "b.test", "localhost:*"), ["b.test", "localhost:*"],
                 id="domains set"),
    pytest.param("domains", ["a.test", "b.test"], ("clear",), [], id="domains clear"),
    pytest.param("ips", ["203.0.113.1"], ("add", "203.0.113.2"), ["203.0.113.1", "203.0.113.2"],
                 id="ips add"),
    pytest.param("ips", ["203.0.113.1", "2001:db8::/48"], ("remove", "2001:db8::/48"), ["203.0.113.1"],
                 id="ips remove"),
    pytest.param("ips", ["203.0.113.1"], ("set", "2001:db8::/48"), ["2001:db8::/48"], id="ips set"),
    pytest.param("ips", ["203.0.113.1"], ("clear",), [], id="ips clear"),
]  # fmt: skip


@pytest.mark.parametrize(("group", "before", "args", "after"), LIST_CHANGES)
def test_list_changes(
    cli: Cli, store: Direct, group: str, before: list[str], args: tuple[str, ...], after: list[str]
) -> None:
    field = "domains" if group == "domains" else "ips"
    store.given(TOKEN, **{field: before})
    action, *entries = args
    result = cli(group, action, TOKEN, *entries, "--json")
    assert result.code == 0, result.err
    assert result.json()["changed"] is True
    assert result.json()["restrictions"][field] == after
    stored = store.get(TOKEN)
    assert stored is not None
    assert getattr(stored, field) == after
    assert stored.version == 2


def test_an_unchanged_write_says_so_and_keeps_the_version(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    result = cli("domains", "add", TOKEN, "app.example.com")
    assert result.code == 0
    assert "unchanged, version 1" in result.out
    assert cli("domains", "add", TOKEN, "app.example.com", "--json").json()["changed"] is False


def test_a_list_with_its_restriction_off_gets_a_warning(cli: Cli) -> None:
    assert "restriction is off" in cli("domains", "add", TOKEN, "app.example.com").err


# ------------------------------------------------------------------------------ switches and delete


@pytest.mark.parametrize(
    ("before", "args", "after"),
    [
        pytest.param((), ("enable", "domain"), (True, False), id="enable domain"),
        pytest.param((), ("enable", "ip"), (False, True), id="enable ip"),
        pytest.param(("domain", "ip"), ("disable", "domain"), (False, True), id="disable domain"),
        pytest.param(("domain", "ip"), ("disable", "ip"), (True, False), id="disable ip"),
    ],
)
def test_enable_and_disable(
    cli: Cli, store: Direct, before: tuple[str, ...], args: tuple[str, str], after: tuple[bool, bool]
) -> None:
    store.given(TOKEN, domains=["app.example.com"], ips=["203.0.113.7"], on=before)
    verb, which = args
    assert cli(verb, TOKEN, which).code == 0
    stored = store.get(TOKEN)
    assert stored is not None
    assert (stored.domain_enabled, stored.ip_enabled) == after


def test_enabling_with_an_empty_list_warns_that_everything_is_denied(cli: Cli) -> None:
    result = cli("enable", TOKEN, "domain")
    assert result.code == 0
    assert "every browser request is denied" in result.err


@pytest.mark.promise("P-DELETE-FORGETS")
def test_delete_leaves_nothing_of_the_token(cli: Cli, store: Direct, redis_url: str) -> None:
    store.given(TOKEN, domains=["app.example.com"], ips=["203.0.113.7"], on=["ip"])
    assert cli("delete", TOKEN, "--json").json() == {"token": cli_fingerprint(cli), "deleted": True}
    assert store.get(TOKEN) is None
    assert list(redis.Redis.from_url(redis_url).scan_iter(match="tav:{*")) == []  # history included
    again = cli("delete", TOKEN)
    assert again.code == 0
    assert "nothing was stored" in again.out


def cli_fingerprint(cli: Cli) -> str:
    fingerprint: str = cli("show", TOKEN, "--json").json()["token"]
    return fingerprint


# ------------------------------------------------------------------------------ check

CHECKS = [
    # (enabled restrictions, request arguments, exit code, reason, source)
    pytest.param((), ("--ip", "198.51.100.1"), 0, "unrestricted", "back_end", id="off-off back"),
    pytest.param(("domain",), ("--origin", "https://app.example.com"), 0, "domain_listed", "front_end",
                 id="D origin listed"),
    pytest.param(("domain",), ("--origin", "http://app.example.com"), 1, "domain_not_listed", "front_end",
                 id="D origin wrong scheme"),
    pytest.param(("domain",), ("--referer", "https://a.shop.test/page"), 0, "domain_listed", "front_end",
                 id="D referer wildcard"),
    pytest.param(("domain",), ("--origin", "null"), 1, "no_domain", "front_end", id="D origin null"),
    pytest.param(("domain",), ("--sec-fetch",), 1, "no_domain", "front_end", id="D sec-fetch only"),
    pytest.param(("domain",), ("--ip", "203.0.113.7"), 1, "back_end_not_allowed", "back_end",
                 id="D back denied"),
    pytest.param(("ip",), ("--origin", "https://app.example.com"), 1, "front_end_not_allowed", "front_end",
                 id="I front denied"),
    pytest.param(("ip",), ("--ip", "::ffff:203.0.113.99"), 0, "ip_listed", "back_end", id="I listed"),
    pytest.param(("ip",), ("--ip", "198.51.100.1"), 1, "ip_not_listed", "back_end", id="I not listed"),
    pytest.param(("ip",), (), 1, "no_ip", "back_end", id="I no ip"),
    pytest.param(("domain", "ip"), ("--origin", "https://x.shop.test"), 0, "domain_listed", "front_end",
                 id="DI front listed"),
    pytest.param(("domain", "ip"), ("--ip", "203.0.113.1"), 0, "ip_listed", "back_end", id="DI back listed"),
]  # fmt: skip


def given_restricted(store: Direct, on: tuple[str, ...]) -> None:
    store.given(TOKEN, domains=["https://app.example.com", "*.shop.test"], ips=["203.0.113.0/24"], on=on)


@pytest.mark.promise("P-DECISION-TABLE")
@pytest.mark.promise("P-ADMIN-TRUTH")
@pytest.mark.parametrize(("on", "request_args", "code", "reason", "source"), CHECKS)
def test_check_follows_the_decision_table(
    cli: Cli,
    store: Direct,
    on: tuple[str, ...],
    request_args: tuple[str, ...],
    code: int,
    reason: str,
    source: str,
) -> None:
    given_restricted(store, on)
    result = cli("check", TOKEN, *request_args, "--json")
    assert result.code == code, result.err
    explained = result.json()
    assert (explained["reason"], explained["source"], explained["allowed"]) == (reason, source, code == 0)


def test_check_explains_classification_what_was_seen_and_the_rule(cli: Cli, store: Direct) -> None:
    given_restricted(store, ("domain",))
    result = cli("check", TOKEN, "--origin", "https://a.shop.test", "--referer", "https://evil.test/")
    assert result.code == 0
    for said in (
        "front end (browser): the request carries an Origin header",
        "domain a.shop.test (https, port 443)",
        "domain_listed",
        "matches *.shop.test",
        "allowed",
    ):
        assert said in result.out
    explained = cli("check", TOKEN, "--origin", "https://a.shop.test", "--json").json()
    assert (explained["signal"], explained["domain"], explained["matched"]) == (
        "origin",
        "a.shop.test",
        ["*.shop.test"],
    )


def test_check_explains_a_back_end_denial(cli: Cli, store: Direct) -> None:
    given_restricted(store, ("ip",))
    result = cli("check", TOKEN, "--ip", "198.51.100.1")
    assert result.code == 1
    for said in ("back end (server): no Origin, Referer or Sec-Fetch-* header", "IP 198.51.100.1", "denied"):
        assert said in result.out
    assert "ip_not_listed: the IP restriction is on and 198.51.100.1 matches nothing" in result.out


@pytest.mark.promise("P-ADMIN-TRUTH")
@pytest.mark.promise("P-UNKNOWN-TOKEN")
def test_check_unknown_token_follows_the_unknown_token_policy(cli: Cli) -> None:
    assert cli("check", "never-stored", "--origin", "https://a.test").code == 0
    denied = cli("check", "never-stored", "--origin", "https://a.test", "--deny-unknown", "--json")
    assert denied.code == 1
    assert denied.json()["reason"] == "unknown_token"


# ------------------------------------------------------------------------------ refusals


@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.promise("P-REFUSAL-WRITES-NOTHING")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(("domains", "add", "exa mple.com"), "not a hostname", id="bad domain"),
        pytest.param(("domains", "set", "ok.example.com", "a.*.b.com"), "wildcard", id="one bad of two"),
        pytest.param(("domains", "add", "ftp://example.com"), "only http:// or https://", id="scheme"),
        pytest.param(("domains", "add", "localhost:99999"), "port number", id="bad port"),
        pytest.param(("domains", "add", "203.0.113.7"), "IP address, not a domain", id="ip as domain"),
        pytest.param(("ips", "add", "10.1.2.3"), "10.0.0.0/8 is private (RFC 1918)", id="private"),
        pytest.param(("ips", "add", "127.0.0.1"), "loopback", id="loopback"),
        pytest.param(("ips", "add", "fe80::1"), "link-local", id="link-local"),
        pytest.param(("ips", "set", "224.0.0.1"), "multicast", id="multicast"),
        pytest.param(("ips", "add", "0.0.0.0"), "unspecified", id="unspecified"),
        pytest.param(("ips", "add", "240.0.0.1"), "reserved", id="reserved"),
        pytest.param(
            ("ips", "add", "203.0.113.7/24"), "did you mean the network 203.0.113.0/24", id="host bits"
        ),
        pytest.param(("ips", "add", "example.com"), "not an IP address", id="domain as ip"),
    ],
)
def test_refused_input_exits_1_and_changes_nothing(
    cli: Cli, store: Direct, args: tuple[str, ...], says: str
) -> None:
    before = store.given(TOKEN, domains=["app.example.com"], ips=["203.0.113.7"])
    group, action, *entries = args
    result = cli(group, action, TOKEN, *entries)
    assert result.code == 1
    assert says in result.err
    assert result.out == ""
    assert store.get(TOKEN) == before


@pytest.mark.promise("P-IP-ENTRIES")
def test_allow_private_stores_a_private_ip(cli: Cli, store: Direct) -> None:
    result = cli("ips", "add", TOKEN, "10.1.2.3", "--allow-private")
    assert result.code == 0, result.err
    assert store.get(TOKEN) == Restrictions(ips=["10.1.2.3"], version=1)


@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.promise("P-REFUSAL-WRITES-NOTHING")
@pytest.mark.promise("P-ENTRY-LIMIT")
def test_limit_error_names_the_limit_and_what_is_stored(cli: Cli, store: Direct) -> None:
    stored = [f"s{n}.example.com" for n in range(4)]
    before = store.given(TOKEN, domains=stored)
    result = cli("domains", "add", TOKEN, "x.example.com", "y.example.com")
    assert result.code == 1
    assert "the domain list allows at most 5 entries; it holds 4: " + ", ".join(stored) in result.err
    assert "nothing was changed" in result.err
    assert store.get(TOKEN) == before


@pytest.mark.promise("P-ENTRY-LIMIT")
def test_the_limit_is_a_setting(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, ips=["203.0.113.1"])
    result = cli("--limit", "1", "ips", "add", TOKEN, "203.0.113.2")
    assert result.code == 1
    assert "at most 1 entries" in result.err


@pytest.mark.promise("P-ADMIN-ERRORS")
def test_store_unreachable_exits_3() -> None:
    result = Cli(f"redis://127.0.0.1:{free_port()}/0")("domains", "add", TOKEN, "a.test", "--timeout", "1")
    assert result.code == 3
    assert "unavailable" in result.err


@pytest.mark.promise("P-ADMIN-ERRORS")
def test_no_store_is_a_usage_error() -> None:
    result = Cli(None)("show", TOKEN)
    assert result.code == 2
    assert "VALIDATOR_STORE_URL" in result.err


@pytest.mark.promise("P-ADMIN-ERRORS")
@pytest.mark.parametrize(
    "args",
    [
        pytest.param((), id="no command"),
        pytest.param(("frobnicate",), id="unknown command"),
        pytest.param(("enable", TOKEN, "everything"), id="unknown switch"),
        pytest.param(("domains", "add", TOKEN), id="add without entries"),
        pytest.param(("show",), id="no token"),
        pytest.param(("--limit", "many", "show", TOKEN), id="limit not a number"),
        pytest.param(("--limit", "0", "show", TOKEN), id="limit below 1"),
        pytest.param(("--store", "ftp://127.0.0.1/", "show", TOKEN), id="unsupported store url"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.code == 2
    assert "error" in result.err


@pytest.mark.promise("P-ADMIN-ERRORS")
def test_json_errors_are_json_on_stderr(cli: Cli) -> None:
    result = cli("ips", "add", TOKEN, "10.0.0.1", "--json")
    assert result.code == 1
    assert result.out == ""
    assert '"exit":1' in result.err
    assert "private" in result.err


def test_secret_on_the_command_line_is_warned_about_and_keys_the_token(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=["app.example.com"])
    result = cli("--secret", "another-secret", "show", TOKEN, "--json")
    assert "shell history" in result.err
    # Another secret hashes the token to other keys, and the store's marker says so: validators
    # with that secret would fail closed, so show does not pretend the token is unknown.
    assert result.code == 3
    assert "another secret" in result.err


# ------------------------------------------------------------------------------ token secrecy


def test_dash_reads_the_token_from_standard_input(cli: Cli, store: Direct) -> None:
    assert cli("domains", "add", "-", "app.example.com", stdin=TOKEN + "\n").code == 0
    assert cli("check", "-", "--origin", "https://evil.test", stdin=TOKEN).code == 0
    assert store.get(TOKEN) == Restrictions(domains=["app.example.com"], version=1)


@pytest.mark.promise("P-TOKENS-NEVER-IN-CLEAR")
def test_no_output_ever_shows_the_token(cli: Cli, store: Direct) -> None:
    store.given(TOKEN, domains=[f"s{n}.test" for n in range(5)], on=["domain"])
    runs = [
        cli("domains", "add", TOKEN, "https://App.example.com/x"),
        cli("ips", "add", TOKEN, "10.0.0.1"),
        cli("show", TOKEN),
        cli("check", TOKEN, "--json", "--origin", "https://evil.test"),
        cli("history", TOKEN),
        cli("export"),
        cli("show", TOKEN, "extra-argument-" + TOKEN),
        cli(TOKEN, "show"),
        cli("delete", TOKEN, "--json"),
    ]
    assert [r.code for r in runs] == [1, 1, 0, 1, 0, 0, 2, 2, 0]
    for result in runs:
        assert "do_not_print" not in result.out + result.err


# ------------------------------------------------------------------------------ terminals


def run_on_terminal(args: list[str], store: str, *, stream: str, stdin: str | None = None) -> str:
    """Run the CLI with `stream` (stdout or stderr) on a pseudo-terminal; return what it drew there."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = environment(store, TERM="xterm-256color", COLUMNS="120")
    stdout = slave if stream == "stdout" else subprocess.DEVNULL
    stderr = slave if stream == "stderr" else subprocess.PIPE
    done = subprocess.run(
        command(*args), input=stdin, stdout=stdout, stderr=stderr, text=True, timeout=60, env=env, check=False
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    assert done.returncode == 0
    return b"".join(chunks).decode(errors="replace")


# ------------------------------------------------------------------------------ init


@pytest.mark.promise("P-MARKER-ON-PURPOSE")
def test_init_marks_the_store_once(redis_url: str) -> None:
    cli = Cli(redis_url)
    raw = redis.Redis.from_url(redis_url)
    assert raw.get("tav:marker") is None
    first = cli("init", "--json")
    assert first.code == 0, first.err
    assert first.json() == {"marker": "tav:marker", "created": True}
    assert raw.get("tav:marker") is not None
    again = cli("init")
    assert again.code == 0
    assert "already initialised" in again.out


@pytest.mark.promise("P-ADMIN-ERRORS")
def test_init_with_another_secret_is_refused(redis_url: str) -> None:
    cli = Cli(redis_url)
    assert cli("init").code == 0
    marker = redis.Redis.from_url(redis_url).get("tav:marker")
    other = cli("init", VALIDATOR_SECRET="another-secret")
    assert other.code == 2
    assert "another secret" in other.err
    assert redis.Redis.from_url(redis_url).get("tav:marker") == marker


async def test_validators_trust_the_store_once_it_is_initialised(redis_url: str) -> None:
    cli = Cli(redis_url)
    async with Validator.from_url(redis_url, secret=SECRET) as validator:
        with pytest.raises(StoreUnavailable):
            await validator.check("tok_never_stored", client_ip="203.0.113.7")
        assert cli("init").code == 0
        await validator.sync()
        assert (await validator.check("tok_never_stored", client_ip="203.0.113.7")).allowed
