"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs every benchmark to the end.

No timing assertions: figures from a shared CI machine mean nothing; that every benchmark still
runs and reports does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import BENCHMARKS
from tests.redis_cluster import LocalCluster, LocalSentinel, redis_cli

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


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_miss_and_import_run_on_cluster_and_sentinel_beside_standalone(
    tmp_path: Path, redis_cluster: LocalCluster, redis_sentinel: LocalSentinel
) -> None:
    out = tmp_path / "out.json"
    stores = ["--store", "local", "--store", redis_cluster.url, "--store", redis_sentinel.url]
    command = [sys.executable, "-m", "benchmarks", "miss", "import", "--quick", "--runs", "1"]
    done = subprocess.run(
        [*command, *stores, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    cases = {result["case"]: result for result in report["results"]}
    for label in ("standalone", "cluster", "sentinel"):
        assert f"{label}: 100 task(s): Validator.check()" in cases
        assert f"{label}: CLI import (python -m validator import)" in cases
    # Each case on another store is compared with the same case on the first.
    ours = cases["cluster: 100 task(s): Validator.check()"]
    assert ours["ratios"]["standalone: 100 task(s): Validator.check()"] > 0
    assert ours["ratios"]["cluster: 100 task(s): raw client (floor)"] > 0
    # Nothing of the runs is left behind on the shared cluster and sentinel.
    leftovers = [
        key for port in [node.port for node in redis_cluster.primaries()] for key in _keys(port, "bench:*")
    ]
    leftovers += _keys(redis_sentinel.current_master().port, "bench:*")
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gate_reports_the_gate_alone_and_behind_nginx(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gate", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = {result["case"]: result for result in json.loads(out.read_text())["results"]}
    gate = cases["validator-gate alone (nginx mode, cached token, allowed)"]
    assert gate["median"] > 0
    assert gate["ratios"]["upstream alone (uvicorn, 200 hello)"] > 0
    # nginx is installed by scripts/install-system: the through-nginx figures are there too.
    assert cases["nginx -> gate -> upstream"]["ratios"]["nginx -> upstream"] > 0
    assert "p50 at 1 connection: added by the gate" in cases


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scaling_reports_cached_checks_memory_and_misses_by_size(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "scaling", "--quick", "--json", str(out)],
        cwd=ROOT,
        # The smallest size only: the smoke test shows it runs and reports, not how cost grows.
        env={**os.environ, "BENCHMARKS_SCALING_MAX_TOKENS": "1000"},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cases = {result["case"]: result for result in json.loads(out.read_text())["results"]}
    assert not any(case.startswith("10,000 tokens") for case in cases)
    cached = cases["1,000 tokens: back-end allow: check_cached()"]
    assert cached["ratios"]["1,000 tokens: back-end allow: floor (hand-written)"] > 0
    assert cases["RSS per token, 1,000 tokens: Validator cache"]["median"] > 0
    for tasks in ("1", "10", "100", "1,000"):
        ours = cases[f"misses, {tasks} task(s): Validator.check()"]
        assert ours["ratios"][f"misses, {tasks} task(s): raw client (floor)"] > 0
        assert cases[f"misses, {tasks} task(s): Validator.check(): client CPU"]["median"] > 0


@pytest.mark.timeout(60)
def test_a_cluster_store_is_refused_by_a_single_server_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "memory", "--store", "redis+cluster://127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "memory measure(s) one Redis server" in done.stderr


def _keys(port: int, pattern: str) -> list[str]:
    return redis_cli(port, "--scan", "--pattern", pattern).split()
