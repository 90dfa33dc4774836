"""middleware: requests/s of the demo endpoint under uvicorn, with and without the middleware.

Three uvicorn servers run side by side, each a separate process (`uvicorn --factory
benchmarks._apps:NAME --loop uvloop --http httptools --workers 1 --no-access-log --log-level
warning --no-proxy-headers`), serving `GET /v1/hello` of `validator.web.demo`:

- no middleware (the ceiling);
- `TokenAccessMiddleware`, built exactly as the demo builds it;
- the same check as a team would write it by hand: a Starlette `BaseHTTPMiddleware` awaiting
  `Validator.check()` (see `benchmarks._apps.base_http`).

Every request sends `X-API-Key: demo-server`, a demo token whose IP list allows 127.0.0.1 (stored
with `allow_private`), so every request is a back-end request that is checked and allowed; the
token is cached by a warm-up run before timing. Load comes from a separate process: wrk
(`-t1 -c50 -d5s`, 9 runs; 1 s and 1 run with --quick) where installed, else `benchmarks._loadgen` (50
connections). With taskset and two or more CPUs the servers run on CPU 0 and the load on CPU 1.
The three servers take turns, in a rotated order per run. Figures are requests/s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._harness import ROOT, Config, Result, can_pin, interleaved, module_main, progress
from tests.redis_servers import free_port

NAME = "middleware"
NONE = "no middleware"
OURS = "TokenAccessMiddleware"
BASE_HTTP = "BaseHTTPMiddleware (hand-written)"
FACTORIES = {NONE: "none", OURS: "ours", BASE_HTTP: "base_http"}
HEADER = "X-API-Key: demo-server"
CONNECTIONS = 50


def _taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


class _Server:
    def __init__(self, factory: str, cpu: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/hello"
        self.log = Path(tempfile.mkstemp(prefix=f"tav-bench-uvicorn-{factory}-", suffix=".log")[1])
        command = [
            *_taskset(cpu),
            sys.executable, "-m", "uvicorn", "--factory", f"benchmarks._apps:{factory}",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--loop", "uvloop", "--http", "httptools", "--workers", "1",
            "--no-access-log", "--log-level", "warning", "--no-proxy-headers",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)

    def wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        name, value = HEADER.split(": ")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"middleware: uvicorn exited: {self.log.read_text(errors='replace')}")
            try:
                if httpx.get(self.url, headers={name: value}, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"middleware: {self.url} did not answer 200 within {timeout}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def _load(url: str, seconds: float, cpu: int | None) -> float:
    """Requests/s that the load generator reports; raises on any non-2xx response or socket error."""
    if shutil.which("wrk"):
        command = [*_taskset(cpu), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", HEADER, url]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"middleware: wrk saw failures:\n{out}")
        match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        if match is None:
            raise RuntimeError(f"middleware: no Requests/sec in wrk's output:\n{out}")
        return float(match.group(1))
    command = [
        *_taskset(cpu),
        sys.executable,
        "-m",
        "benchmarks._loadgen",
        url,
        str(seconds),
        str(CONNECTIONS),
        HEADER,
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    report = json.loads(done.stdout)
    if report["non_2xx"]:
        raise RuntimeError(f"middleware: {report['non_2xx']} non-2xx responses")
    return float(report["requests"]) / float(report["seconds"])


def run(config: Config) -> list[Result]:
    seconds = config.pick(5, 1)
    runs = config.runs_or(9, 1)
    pin = can_pin() and shutil.which("taskset") is not None
    server_cpu, load_cpu = (0, 1) if pin else (None, None)
    variants = dict(FACTORIES)
    skipped = ""
    try:
        import starlette  # noqa: F401
    except ImportError:
        del variants[BASE_HTTP]
        skipped = "; BaseHTTPMiddleware variant skipped: starlette is not installed"
    servers = {name: _Server(factory, server_cpu) for name, factory in variants.items()}
    samples: dict[str, list[float]] = {}
    try:
        for server in servers.values():
            server.wait()
        for name, server in servers.items():
            progress(NAME, f"warming {name}")
            _load(server.url, max(1, seconds // 5), load_cpu)
        for run_ in range(runs):
            for name in interleaved(list(servers), run_):
                progress(NAME, f"run {run_ + 1}/{runs}: {name}, {seconds} s")
                samples.setdefault(name, []).append(_load(servers[name].url, seconds, load_cpu))
    finally:
        for server in servers.values():
            server.stop()
    generator = "wrk -t1 -c50" if shutil.which("wrk") else "benchmarks._loadgen, 50 connections"
    placement = "servers on CPU 0, load on CPU 1 (taskset)" if pin else "not pinned"
    results = [
        Result(
            NAME,
            NONE,
            "requests/s",
            samples[NONE],
            note=f"{generator}, {seconds} s per run; {placement}; token demo-server, allowed{skipped}",
        ),
        Result(
            NAME, OURS, "requests/s", samples[OURS], vs=(NONE, BASE_HTTP) if BASE_HTTP in samples else (NONE,)
        ),
    ]
    if BASE_HTTP in samples:
        results.append(Result(NAME, BASE_HTTP, "requests/s", samples[BASE_HTTP], vs=(NONE,)))
    return results


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
