"""How the CLI tests run `validator-admin`: as `python -m validator` subprocesses on a real store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from validator import Admin, Restrictions

T = TypeVar("T")

SECRET = "cli-test-secret"


@dataclass
class Result:
    """What one run of the command line left behind."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def environment(store: str | None, **extra: str) -> dict[str, str]:
    """The caller's environment without any VALIDATOR_* setting, plus the test secret and store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALIDATOR_")}
    env["VALIDATOR_SECRET"] = SECRET
    if store is not None:
        env["VALIDATOR_STORE_URL"] = store
    return env | extra


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "validator", *args]


class Cli:
    """Runs `validator-admin` against one store (VALIDATOR_STORE_URL), bounded in time."""

    def __init__(self, store: str | None) -> None:
        self.store = store

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 60, **env: str) -> Result:
        done = subprocess.run(
            command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment(self.store, **env),
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


class Direct:
    """The same store through the Python API, in process: quick set-up and inspection around
    the command line under test (a subprocess costs a third of a second)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, work: Callable[[Admin], Awaitable[T]]) -> T:
        async def run() -> T:
            admin = Admin.from_url(self.url, secret=SECRET)
            try:
                return await work(admin)
            finally:
                await admin.close()

        return asyncio.run(run())

    def init(self) -> bool:
        """Mark the store for the test secret (writes are refused on an unmarked store)."""
        return self._run(lambda admin: admin.init())

    def get(self, token: str) -> Restrictions | None:
        return self._run(lambda admin: admin.get(token))

    def given(
        self, token: str, *, domains: Sequence[str] = (), ips: Sequence[str] = (), on: Sequence[str] = ()
    ) -> Restrictions:
        """Store exactly these restrictions for `token`; `on` names the enabled restrictions."""
        record = Restrictions(
            domain_enabled="domain" in on, ip_enabled="ip" in on, domains=list(domains), ips=list(ips)
        )
        stored = self._run(lambda admin: admin.put(token, record)).restrictions
        assert stored is not None
        return stored
