"""Fixtures of the end-to-end tests: the demo under a real uvicorn process, curl, headless Chromium.

Missing programs fail the tests (they do not skip): `scripts/install-system` installs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.chromium import Chromium, chromium_binary
from tests.processes import stop_process, wait_answering
from tests.redis_servers import RedisProcess, free_port
from validator import Admin, Restrictions

SECRET = "e2e-secret"
# Pages on 127.0.0.1 under distinct names: a listed domain, an unlisted one, and an API host
# for cross-origin calls.
HOST_RULES = "MAP app.test 127.0.0.1, MAP evil.test 127.0.0.1, MAP api.test 127.0.0.1"


class DemoProcess:
    """`python -m validator.web.demo` on a free loopback port, ready when `/` answers."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = args
        self.log = Path(tempfile.mkstemp(prefix="tav-demo-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        command = [
            sys.executable,
            "-m",
            "validator.web.demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "VALIDATOR_SECRET": SECRET}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([*command, *self.args], stdout=log, stderr=log, env=env)
        try:
            wait_answering(self.url() + "/", self.process, "the demo", self.output, timeout=timeout)
        except RuntimeError:
            self.stop()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.unlink(missing_ok=True)


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} not found: the end-to-end tests need it (scripts/install-system installs it)")
    return path


@contextlib.contextmanager
def running(*args: str) -> Iterator[DemoProcess]:
    """A demo started with these arguments, stopped on exit."""
    demo = DemoProcess(*args)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="session")
def demo(redis_server: RedisProcess) -> Iterator[DemoProcess]:
    """The demo on the suite's redis-server, trusting X-Forwarded-For from 127.0.0.1 (so curl,
    whose real address is 127.0.0.1, can present public addresses)."""
    with running("--store", redis_server.url, "--trusted-proxy", "127.0.0.1", "--no-seed") as demo:
        yield demo


@pytest.fixture(scope="session")
def browser() -> Iterator[Chromium]:
    binary = chromium_binary()
    if binary is None:
        pytest.fail(
            "chromium not found: the end-to-end tests need Debian's chromium "
            "(scripts/install-system installs it) or its path in $CHROMIUM"
        )
    chromium = Chromium(binary, host_rules=HOST_RULES)
    try:
        yield chromium
    finally:
        chromium.close()


def seed(store_url: str, token: str, restrictions: Restrictions) -> None:
    """Store one token's restrictions through the admin API, as an operator would."""

    async def put() -> None:
        admin = Admin.from_url(store_url, secret=SECRET)
        try:
            await admin.init()
            await admin.put(token, restrictions)
        finally:
            await admin.close()

    asyncio.run(put())
