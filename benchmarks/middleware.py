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
20,000 with --quick), and the difference: what the middleware adds per request. Also a denied
request (`demo-browser`, front-end use only, sent as a server): the 403 with its
`Access-Denied-Ref`. The loop never yields to the event loop, so the denial log's writer never
runs: after the queue's 10,000 the denials are counted as dropped, as in a flood.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks._harness import (
    ROOT,
    Config,
    Process,
    Result,
    can_pin,
    empty_body,
    interleaved,
    module_main,
    progress,
    run_async,
    taskset,
    uvicorn_command,
    wrk_scope,
)
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
DENIED = f"{OURS}, denied (403 with Access-Denied-Ref)"


def _server(factory: str, cpu: int | None) -> tuple[Process, str]:
    """uvicorn serving `benchmarks._apps:<factory>` on a free port, and the URL wrk loads."""
    port = free_port()
    command = uvicorn_command(f"benchmarks._apps:{factory}", port, cpu, factory=True)
    return Process(command, NAME, f"uvicorn-{factory}"), f"http://127.0.0.1:{port}/v1/hello"


def _load(url: str, seconds: float, cpu: int | None) -> tuple[float, int]:
    """Requests/s and requests that the load generator reports; raises on any non-2xx response or
    socket error."""
    if shutil.which("wrk"):
        command = [*taskset(cpu), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", HEADER, url]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        if "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"middleware: wrk saw failures:\n{out}")
        match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        count = re.search(r"([0-9]+) requests in", out)
        if match is None or count is None:
            raise RuntimeError(f"middleware: no Requests/sec in wrk's output:\n{out}")
        return float(match.group(1)), int(count.group(1))
    command = [
        *taskset(cpu),
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

_scope = wrk_scope(8000, "/v1/hello", (HEADER,))  # what wrk sends
_denied_scope = wrk_scope(8000, "/v1/hello", ("X-API-Key: demo-browser",))  # front-end use only
_receive = empty_body


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
    # Each case: the app, the request, the status it must get.
    cases = {
        NONE: (apps[NONE], _scope, 200),
        OURS: (apps[OURS], _scope, 200),
        DENIED: (apps[OURS], _denied_scope, 403),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for name, (app, scope, status) in cases.items():  # warm: tokens cached, every path run once
            await app(scope(), _receive, send)
            if statuses.pop() != status:
                raise RuntimeError(f"middleware: in process, {name} was not answered {status}")
        for run_ in range(runs):
            for name in interleaved(list(cases), run_):
                app, scope, status = cases[name]
                started = time.thread_time_ns()
                for _ in range(requests):
                    await app(scope(), _receive, send)
                samples[name].append((time.thread_time_ns() - started) / requests)
                if statuses.count(status) != len(statuses):
                    raise RuntimeError(f"middleware: in process, a request of {name} not answered {status}")
                statuses.clear()
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
    servers = {name: _server(factory, server_cpu) for name, factory in variants.items()}
    samples: dict[str, list[float]] = {}
    cpu_per_request: dict[str, list[float]] = {}
    try:
        for server, url in servers.values():
            server.wait(url, (HEADER,))
        for name, (_, url) in servers.items():
            progress(NAME, f"warming {name}")
            _load(url, max(1, seconds // 5), load_cpu)
        for run_ in range(runs):
            for name in interleaved(list(servers), run_):
                server, url = servers[name]
                progress(NAME, f"run {run_ + 1}/{runs}: {name}, {seconds} s")
                before = server.cpu_seconds()
                rate, count = _load(url, seconds, load_cpu)
                after = server.cpu_seconds()
                samples.setdefault(name, []).append(rate)
                if before is not None and after is not None:
                    cpu_per_request.setdefault(name, []).append((after - before) / count * 1e6)
    finally:
        for server, _ in servers.values():
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
        Result(
            NAME, f"{IN_PROCESS}: {DENIED}", "ns CPU/request", in_process[DENIED], higher_is_better=False,
            vs=(f"{IN_PROCESS}: {OURS}",),
            note="token demo-browser sent as a server; the denial queue is full after 10,000",
        ),
    ]  # fmt: skip
    return results


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
