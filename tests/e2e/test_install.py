"""A plain install is lean and works: built as a release is (sdist, then a wheel from it),
installed into a fresh venv from the sdist, without any extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from tests.redis_servers import RedisProcess

ROOT = Path(__file__).resolve().parents[2]
# What a plain install used to pull and must not any more (issue 13): a test double, a Lua
# runtime, a terminal UI, servers.
NOT_IN_A_PLAIN_INSTALL = {"fakeredis", "lupa", "sortedcontainers", "rich", "uvloop", "uvicorn", "httptools"}
RUNTIME = {"redis", "hiredis", "msgspec", "idna", "publicsuffixlist"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Nothing of this checkout may leak into the fresh venv's runs.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VALIDATOR_", "PYTHONPATH"))}
    return subprocess.run(
        [str(a) for a in args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **(env or {})},
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def plain(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed from its sdist, no extras: its bin folder."""
    home = tmp_path_factory.mktemp("plain")
    venv.create(home, with_pip=True)
    bin_dir = home / "bin"
    (sdist,) = dist.glob("*.tar.gz")
    installed = run(bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", sdist)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return bin_dir


def test_the_wheel_ships_the_lua_scripts_and_the_type_marker(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "validator/py.typed" in names
    assert {"validator/store/lua/read.lua", "validator/store/lua/write.lua"} <= names


def test_a_plain_install_pulls_only_what_the_library_imports(plain: Path) -> None:
    listed = run(plain / "python", "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check")
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert not installed & NOT_IN_A_PLAIN_INSTALL, installed & NOT_IN_A_PLAIN_INSTALL
    assert installed >= RUNTIME | {"token-access-validator"}


def test_validator_admin_works_on_a_plain_install(plain: Path, tmp_path: Path) -> None:
    server = RedisProcess()
    server.start()
    try:
        env = {"VALIDATOR_SECRET": "plain-install", "VALIDATOR_STORE_URL": server.url}
        admin = plain / "validator-admin"
        assert run(admin, "--help").returncode == 0
        # The version of the distribution installed, as pyproject.toml gives it.
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        assert run(admin, "--version").stdout == f"validator-admin {version}\n"
        assert run(admin, "init", env=env).returncode == 0
        added = run(admin, "ips", "add", "tok_plain_1", "203.0.113.7", env=env)
        assert added.returncode == 0, added.stderr
        shown = run(admin, "show", "tok_plain_1", env=env)
        assert shown.returncode == 0 and "203.0.113.7" in shown.stdout
        # The memory:// store is an extra: a hint, not a ModuleNotFoundError traceback.
        memory = run(admin, "--store", "memory://", "show", "tok_plain_1", env=env)
        assert memory.returncode == 2
        error = memory.stderr.strip().splitlines()[-1]
        assert error.startswith("validator-admin: error:") and "token-access-validator[memory]" in error
        assert "Traceback" not in memory.stderr
    finally:
        server.cleanup()


def test_the_middleware_works_on_a_plain_install(plain: Path, tmp_path: Path) -> None:
    server = RedisProcess()
    server.start()
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, json
            from validator import Admin, Restrictions, Validator
            from validator.web.middleware import TokenAccessMiddleware

            async def app(scope, receive, send):
                await send({{"type": "http.response.start", "status": 200, "headers": []}})
                await send({{"type": "http.response.body", "body": b"ok"}})

            async def call(asgi, ip):
                sent = []
                scope = {{"type": "http", "method": "GET", "path": "/", "query_string": b"",
                          "headers": [(b"x-api-key", b"tok_plain_2")], "client": (ip, 5000)}}
                async def receive():
                    return {{"type": "http.request", "body": b""}}
                async def send(message):
                    sent.append(message)
                await asgi(scope, receive, send)
                return sent[0]["status"]

            async def main():
                admin = Admin.from_url("{server.url}", secret="plain")
                await admin.init()
                await admin.put("tok_plain_2", Restrictions(
                    domain_enabled=False, ip_enabled=True, domains=[], ips=["203.0.113.7"]))
                await admin.close()
                validator = Validator.from_url("{server.url}", secret="plain")
                asgi = TokenAccessMiddleware(app, validator=validator)
                print(json.dumps([await call(asgi, "203.0.113.7"), await call(asgi, "198.51.100.1")]))
                await validator.close()

            asyncio.run(main())
            """
        )
    )
    try:
        ran = run(plain / "python", script)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stdout.strip() == "[200, 403]"
    finally:
        server.cleanup()
