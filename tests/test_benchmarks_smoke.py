"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs every benchmark to the end.

No timing assertions: figures from a shared CI machine mean nothing; that every benchmark still
runs and reports does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_reports_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    benchmarks = {result["benchmark"] for result in report["results"]}
    assert benchmarks == set(BENCHMARKS)
    for result in report["results"]:
        assert result["samples"], result
        assert all(name in result["ratios"] for name in result["vs"]), result
    assert report["environment"]["python"]
