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
The three servers take turns, in a rotated order per run. Figures are requests/s, and (Linux) the
server process's CPU time per request over the same runs (utime + stime from /proc/PID/stat,
divided by the requests the load generator counted): on a machine shared with other work,
requests/s move with whatever else runs on the servers' CPU, CPU time per request much less.

In process: one request at a time through the ASGI callable (`DemoApp`, as uvicorn calls it) with
a fake receive and send, no server and no sockets: ns of this thread's CPU time
(`time.thread_time_ns`) per request, with and without the middleware (200,000 requests per run;
20,000 with --quick), and the difference: what the middleware adds per request.
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
from typing import Any

import httpx

from benchmarks._harness import ROOT, Config, Result, can_pin, interleaved, module_main, progress, run_async
from tests.redis_servers import free_port
from validator.web.types import ASGIApp, Message

NAME = "middleware"
NONE = "no middleware"
OURS = "TokenAccessMiddleware"
BASE_HTTP = "BaseHTTPMiddleware (hand-written)"
FACTORIES = {NONE: "none", OURS: "ours", BASE_HTTP: "base_http"}
HEADER = "X-API-Key: demo-server"
CONNECTIONS = 50
IN_PROCESS = "in process"
ADDED = f"{IN_PROCESS}: added by {OURS}"


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

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server so far (`taskset` execs it: same pid), or None
        without /proc."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def _load(url: str, seconds: float, cpu: int | None) -> tuple[float, int]:
    """Requests/s and requests that the load generator reports; raises on any non-2xx response or
    socket error."""
    if shutil.which("wrk"):
        command = [*_taskset(cpu), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", HEADER, url]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"middleware: wrk saw failures:\n{out}")
        match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        count = re.search(r"([0-9]+) requests in", out)
        if match is None or count is None:
            raise RuntimeError(f"middleware: no Requests/sec in wrk's output:\n{out}")
        return float(match.group(1)), int(count.group(1))
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
    return float(report["requests"]) / float(report["seconds"]), int(report["requests"])


# ---------------------------------------------------------------------------------------- in process

_SCOPE_HEADERS = [(b"host", b"127.0.0.1:8000"), (b"x-api-key", b"demo-server")]  # what wrk sends


def _scope() -> dict[str, Any]:
    """A request's scope as uvicorn (httptools) builds it for wrk's `GET /v1/hello`."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
        "method": "GET", "root_path": "", "path": "/v1/hello", "raw_path": b"/v1/hello",
        "query_string": b"", "headers": list(_SCOPE_HEADERS), "state": {},
    }  # fmt: skip


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _in_process(requests: int, runs: int) -> dict[str, list[float]]:
    """ns of thread CPU time per request through each app, the apps taking turns run by run."""
    from benchmarks._apps import none, ours
    from validator.admin.api import Admin
    from validator.web.demo import DemoApp, seed

    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    apps: dict[str, ASGIApp] = {NONE: none(), OURS: ours()}
    for app in apps.values():
        assert isinstance(app, DemoApp)
        await app.validator.connect()
        await seed(Admin(app.validator.store))
    samples: dict[str, list[float]] = {name: [] for name in apps}
    try:
        for app in apps.values():  # warm: the token cached, every code path run once
            await app(_scope(), _receive, send)
        if statuses != [200, 200]:
            raise RuntimeError(f"middleware: in process, the demo answered {statuses}, not 200")
        statuses.clear()
        for run_ in range(runs):
            for name in interleaved(list(apps), run_):
                app = apps[name]
                scope = _scope
                started = time.thread_time_ns()
                for _ in range(requests):
                    await app(scope(), _receive, send)
                samples[name].append((time.thread_time_ns() - started) / requests)
        if statuses.count(200) != len(statuses):
            raise RuntimeError("middleware: in process, a request was not answered 200")
    finally:
        for app in apps.values():
            assert isinstance(app, DemoApp)
            await app.validator.close()
    return samples


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
    requests = config.pick(200_000, 20_000)
    progress(NAME, f"in process: {runs} runs of {requests:,} requests")
    in_process = run_async(_in_process(requests, runs))
    servers = {name: _Server(factory, server_cpu) for name, factory in variants.items()}
    samples: dict[str, list[float]] = {}
    cpu_per_request: dict[str, list[float]] = {}
    try:
        for server in servers.values():
            server.wait()
        for name, server in servers.items():
            progress(NAME, f"warming {name}")
            _load(server.url, max(1, seconds // 5), load_cpu)
        for run_ in range(runs):
            for name in interleaved(list(servers), run_):
                progress(NAME, f"run {run_ + 1}/{runs}: {name}, {seconds} s")
                before = servers[name].cpu_seconds()
                rate, count = _load(servers[name].url, seconds, load_cpu)
                after = servers[name].cpu_seconds()
                samples.setdefault(name, []).append(rate)
                if before is not None and after is not None:
                    cpu_per_request.setdefault(name, []).append((after - before) / count * 1e6)
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
    if len(cpu_per_request) == len(samples):
        unit = "µs server CPU/request"
        cpu_note = "same runs; utime + stime of the uvicorn process / requests wrk counted"
        results += [
            Result(NAME, f"CPU: {NONE}", unit, cpu_per_request[NONE], higher_is_better=False, note=cpu_note),
            Result(
                NAME,
                f"CPU: {OURS}",
                unit,
                cpu_per_request[OURS],
                higher_is_better=False,
                vs=(f"CPU: {NONE}",),
            ),
        ]
        if BASE_HTTP in cpu_per_request:
            results.append(
                Result(
                    NAME, f"CPU: {BASE_HTTP}", unit, cpu_per_request[BASE_HTTP], higher_is_better=False,
                    vs=(f"CPU: {NONE}",),
                )
            )  # fmt: skip
    added = [ours - none for ours, none in zip(in_process[OURS], in_process[NONE], strict=True)]
    results += [
        Result(
            NAME, f"{IN_PROCESS}: {NONE}", "ns CPU/request", in_process[NONE], higher_is_better=False,
            note=f"{requests:,} requests per run through DemoApp's ASGI callable, fake receive/send",
        ),
        Result(
            NAME, f"{IN_PROCESS}: {OURS}", "ns CPU/request", in_process[OURS], higher_is_better=False,
            vs=(f"{IN_PROCESS}: {NONE}",),
        ),
        Result(NAME, ADDED, "ns CPU/request", added, higher_is_better=False),
    ]  # fmt: skip
    return results


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
