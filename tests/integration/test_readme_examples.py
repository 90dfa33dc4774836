"""The examples of the README and of the manual's pages (docs/, the site) run as written: their
Python blocks, their `validator-admin` sessions and import lines, against a throwaway redis-server.

Every fenced block of README.md and of the pages in `PAGES` is found here. A block preceded by
`<!-- not run: REASON -->` is a fragment: its Python is only compiled. Every other `python` and
`console` block runs, with the examples' store URL (`redis://127.0.0.1:6379/0`) swapped for this
module's own server, so the Redis on port 6379 is never touched. A block that defines `app` is
served the way uvicorn serves it: lifespan start-up, requests, lifespan shutdown; after every
block, no connection of its own may be left open on the server (the middleware closes the
validator at shutdown).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from tests.redis_servers import RedisProcess
from validator import Admin
from validator.admin.api import ImportLine

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The manual's pages that came out of the README (docs/behaviour.md, benchmarks.md, deploying.md
# and sizing.md show no Python, console or JSON block; deploying.md's proxy snippets are checked
# by tests/unit/test_deploying_snippets.py).
PAGES = (
    "index.md",
    "getting-started.md",
    "python.md",
    "outages.md",
    "data-layout.md",
    "asgi.md",
    "fastapi.md",
    "gate.md",
    "admin-cli.md",
    "report-only.md",
    "cluster.md",
    "compares.md",
    "architecture.md",
)
DOCUMENTS = (README, *(ROOT / "docs" / page for page in PAGES))
# The store every example names; replaced by the test server's URL before anything runs.
README_URL = "redis://127.0.0.1:6379/0"
SECRET = "change-me"
TOKEN = "tok_live_123"
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


@dataclass(frozen=True)
class Block:
    """One fenced block of a document: where it is, under which heading, and whether it runs."""

    source: str  # the document's path in the repository
    language: str
    code: str
    line: int
    heading: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.source} line {self.line} ({self.heading})"


def blocks(text: str, source: str = "README.md") -> list[Block]:
    """Every fenced block of `text`, with the `<!-- not run: ... -->` mark of the line before it."""
    found: list[Block] = []
    lines = text.splitlines()
    heading = "top"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):  # a heading: the loop skips over the inside of every block
            heading = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{source} line {i + 1}: a code block is never closed"
        mark = NOT_RUN.search(lines[i - 1]) if i > 0 else None
        found.append(
            Block(
                source=source,
                language=fence["language"],
                code="\n".join(lines[i + 1 : end]) + "\n",
                line=i + 1,
                heading=heading,
                not_run=mark["reason"] if mark else None,
            )
        )
        i = end + 1
    return found


ALL = [
    block
    for document in DOCUMENTS
    for block in blocks(document.read_text(encoding="utf-8"), str(document.relative_to(ROOT)))
]


def of(language: str, *, runnable: bool | None = None) -> list[Any]:
    chosen = [
        b for b in ALL if b.language == language and (runnable is None or (b.not_run is None) == runnable)
    ]
    return [
        pytest.param(b, id=re.sub(r"[^a-z0-9]+", "-", f"{Path(b.source).stem}-{b.heading}-{b.line}".lower()))
        for b in chosen
    ]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisProcess]:
    """A redis-server for this module alone, so that its client list shows only our connections."""
    process = RedisProcess()
    process.start()
    yield process
    process.cleanup()


@pytest.fixture
def url(server: RedisProcess) -> Iterator[str]:
    """The server's URL, empty for this test; afterwards, no connection may be left but ours."""
    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.flushall()
    ours = client.client_id()
    yield server.url
    others: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        # A closed socket reaches the server a moment after close() returns: poll, briefly.
        others = [c for c in client.client_list() if int(c["id"]) != ours]
        if not others:
            break
        time.sleep(0.02)
    # A leak fails this test alone: the next one starts without it.
    client.client_kill_filter(_type="normal", skipme=True)
    client.close()
    assert not others, f"connections left open after the example: {[(c['name'], c['cmd']) for c in others]}"


def local(code: str, url: str, block: Block) -> str:
    assert README_URL in code, f"{block.name}: the example should name the store {README_URL}"
    swapped = code.replace(README_URL, url)
    assert re.search(r":6379\b", swapped) is None, f"{block.name}: names another store on port 6379"
    return swapped


# --------------------------------------------------------------------------------- Python


def test_the_readme_has_runnable_examples() -> None:
    runnable = [b for b in ALL if b.not_run is None and b.language in ("python", "console")]
    names = {b.heading for b in runnable}
    assert {"Use it from Python", "ASGI middleware", "FastAPI", "Admin command line"} <= names
    # The landing page's own examples run too: Python, ASGI and FastAPI.
    in_readme = {b.heading for b in runnable if b.source == "README.md"}
    assert {"Use it from Python", "ASGI middleware", "FastAPI"} <= in_readme


@pytest.mark.parametrize("block", of("python"))
def test_python_block_compiles(block: Block) -> None:
    try:
        compile(block.code, block.name, "exec")
    except SyntaxError as error:
        pytest.fail(f"{block.name} is not valid Python: {error}")


def seed(url: str) -> None:
    """tok_live_123 as the README's first example leaves it: browsers on app.example.com only."""

    async def run() -> None:
        admin = Admin.from_url(url, secret=SECRET)
        try:
            await admin.init()
            await admin.set_domains(TOKEN, ["app.example.com"])
            await admin.enable(TOKEN, "domain")
        finally:
            await admin.close()

    asyncio.run(run())


async def serve(app: ASGIApp, requests: list[dict[str, str]]) -> list[httpx.Response]:
    """Run `app` as a server does: lifespan start-up, `requests` (headers of GET /v1/hello),
    lifespan shutdown."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    lifespan = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(outbox.get(), 10)
    assert started["type"] == "lifespan.startup.complete", started
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        responses = [await client.get("/v1/hello", headers=headers) for headers in requests]
    await inbox.put({"type": "lifespan.shutdown"})
    stopped = await asyncio.wait_for(outbox.get(), 10)
    assert stopped["type"] == "lifespan.shutdown.complete", stopped
    await asyncio.wait_for(lifespan, 10)
    return responses


DENIED = {"error": "Access denied. You don't have permission to access this."}
REQUESTS: list[tuple[str, dict[str, str], int, dict[str, str] | None]] = [
    ("no token", {}, 401, {"error": "API token required."}),
    ("a token with nothing stored: unrestricted", {"X-API-Key": "tok_anything"}, 200, None),
    ("domain-restricted token from a server", {"X-API-Key": TOKEN}, 403, DENIED),
    (
        "domain-restricted token from its page",
        {"X-API-Key": TOKEN, "Origin": "https://app.example.com"},
        200,
        None,
    ),
    ("the same from another page", {"X-API-Key": TOKEN, "Origin": "https://evil.test"}, 403, DENIED),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", of("python", runnable=True))
def test_python_block_runs(block: Block, url: str) -> None:
    code = local(block.code, url, block)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    try:
        exec(compile(code, block.name, "exec"), namespace)
    except Exception:
        pytest.fail(f"{block.name} failed:\n{traceback.format_exc()}")
    app = namespace.get("app")
    if app is None:
        return
    seed(url)
    responses = asyncio.run(serve(app, [headers for _, headers, _, _ in REQUESTS]))
    for (case, _, status, body), response in zip(REQUESTS, responses, strict=True):
        assert response.status_code == status, f"{block.name}, {case}: {response.status_code} {response.text}"
        if body is not None:
            assert response.json() == body, f"{block.name}, {case}"


@pytest.mark.timeout(60)
def test_the_first_example_prints_what_its_comments_say(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = [
        b
        for b in ALL
        if b.source == "README.md" and b.heading == "Use it from Python" and b.language == "python"
    ]
    exec(compile(local(block.code, url, block), block.name, "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "stored 'app.example.com'" in out
    assert "Reason.BACK_END_NOT_ALLOWED" in out


# --------------------------------------------------------------------------------- console


def session(block: Block) -> list[tuple[str, list[str]]]:
    """(command, the lines shown after it) for each `$ ` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"{block.name}: output before the first command"
            steps[-1][1].append(line)
    return steps


# What changes from run to run: the time of a change, an import's duration and rate.
VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"), "<time>"),
    (re.compile(r"in \d+\.\d s \(\d+/s\)"), "in <seconds> s (<rate>/s)"),
]


def normal(lines: list[str]) -> list[str]:
    for pattern, replacement in VARYING:
        lines = [pattern.sub(replacement, line) for line in lines]
    return [line.rstrip() for line in lines]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", of("console", runnable=True))
def test_console_session_runs_as_written(block: Block, url: str, tmp_path: Path) -> None:
    steps = session(block)
    # One shell for the whole session (exports carry over), as a reader types it, with a marker
    # line on both streams between commands. Lines from `validator-admin:` are its stderr.
    script = ["set +e"]
    for n, (command, _) in enumerate(steps):
        script += [
            f"echo '@@ {n}'; echo '@@ {n}' >&2",
            local(command, url, block) if README_URL in command else command,
        ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VALIDATOR_")}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    ran = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    def split(stream: str) -> list[list[str]]:
        parts: list[list[str]] = []
        for line in stream.splitlines():
            if re.fullmatch(r"@@ \d+", line):
                parts.append([])
            else:
                assert parts, f"{block.name}: output before the first command: {line}"
                parts[-1].append(line)
        return parts

    outs, errs = split(ran.stdout), split(ran.stderr)
    assert len(outs) == len(errs) == len(steps), ran.stderr
    for (command, shown), out, err in zip(steps, outs, errs, strict=True):
        expected_out = [line for line in shown if not line.startswith("validator-admin:")]
        expected_err = [line for line in shown if line.startswith("validator-admin:")]
        assert "Traceback" not in "\n".join(err), f"{block.name}, `{command}`:\n" + "\n".join(err)
        assert normal(out) == normal(expected_out), f"{block.name}, `{command}`: standard output differs"
        assert normal(err) == normal(expected_err), f"{block.name}, `{command}`: standard error differs"


# --------------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("block", of("json"))
def test_json_block_is_an_import_line(block: Block) -> None:
    for line in block.code.splitlines():
        try:
            json.loads(line)
            msgspec.json.decode(line, type=ImportLine)
        except (ValueError, msgspec.ValidationError) as error:
            pytest.fail(f"{block.name}: not an import line: {error}")
