"""`validator-admin --version`: the installed package's version, with no store and no secret."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from validator.admin.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    installed = importlib.metadata.version("token-access-validator")
    assert capsys.readouterr().out == f"validator-admin {installed}\n"
    # What is installed is this checkout's version (scripts/install builds it from pyproject.toml).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert installed == project["version"]


@pytest.mark.timeout(60)
def test_the_command_line_answers_version_without_a_store() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALIDATOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "validator", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"validator-admin {importlib.metadata.version('token-access-validator')}\n"
