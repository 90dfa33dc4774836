"""gate: the forward-auth gate's checks/s per core, and what it adds behind nginx.

Servers, each a separate process under uvicorn (`--loop uvloop --http httptools --workers 1
--no-access-log --no-proxy-headers`), all on CPU 0 when taskset and two CPUs are there (wrk on
CPU 1):

- the upstream: a trivial ASGI app answering `200 hello` to any path: the floor of one uvicorn
  request, and the "one upstream" of the latency target;
- the gate, `validator.web.gate` in nginx mode on a `memory://` store seeded with the demo's
  tokens, trusting 127.0.0.1, on the gate's own server (`validator.web.gate_server`, uvloop and
  httptools), as `validator-gate` runs it (`benchmarks._gate_server seeded`);
- an instant gate (`benchmarks._gate_server instant`): answers every request head with 200
  without parsing or checking anything: the floor of the hop, nginx's own `auth_request` cost.

(a) Gate alone: wrk sends what nginx's `auth_request` sends (`X-Original-URI`, `-Method`,
`X-Real-IP: 203.0.113.7`, `X-API-Key: demo-server`, a token whose IP list has that address),
cached by a warm-up: requests/s (target: >= 10,000 per core) and server CPU per request (with
its inverse, checks per CPU-second: what one core serves when the server has it to itself),
against wrk on the upstream in the same run.

(b) If nginx is installed: one nginx (one worker, CPU 0) running docs/deploying/nginx.conf with the
gate and the upstream's ports put in: `GET /v1/hello` passes `auth_request` (the gate) then the
upstream, `GET /status` (a public path of the config) the upstream alone, so both go through the
same nginx to the same upstream and differ only by the gate. A second nginx, the same config with
the instant gate in place of the gate, gives `nginx -> instant gate -> upstream`: the most any
gate can reach. Figures: requests/s at 50
connections, and p50 latency at 1 connection (wrk `--latency`), with the upstream's own p50 (wrk
straight at it). Target: the gate adds at most one upstream's worth of p50.

In process: one request at a time through the gate's ASGI callable and the upstream's, fake
receive and send, no sockets: ns of this thread's CPU time per request (200,000 requests per run;
20,000 with --quick), and the difference: the gate's own work.

wrk `-t1`, 5 s per run (1 s with --quick), 7 runs (1 with --quick), alternatives interleaved.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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
from validator.web.types import ASGIApp, Message, Receive, Scope, Send

NAME = "gate"
CONNECTIONS = 50
GATE_HEADERS = (
    "X-Original-URI: /v1/hello",
    "X-Original-Method: GET",
    "X-Real-IP: 203.0.113.7",
    "X-API-Key: demo-server",
)
TOKEN_HEADER = "X-API-Key: demo-server"
SNIPPET = ROOT / "docs" / "deploying" / "nginx.conf"

UPSTREAM = "upstream alone (uvicorn, 200 hello)"
GATE = "validator-gate alone (nginx mode, cached token, allowed)"
ALONE = "nginx -> upstream"
GATED = "nginx -> gate -> upstream"
INSTANT = "nginx -> instant gate -> upstream (floor of the hop)"
P50 = "p50 at 1 connection"


# ---------------------------------------------------------------------------------------- the apps


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """`uvicorn --factory` is not needed: a plain ASGI app answering 200 to anything."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


def seeded_gate() -> ASGIApp:
    """`uvicorn --factory`: the gate in nginx mode on a memory store seeded with the demo's tokens
    when the lifespan starts."""
    from validator import Validator
    from validator.admin.api import Admin
    from validator.web.demo import seed
    from validator.web.gate import build_gate

    validator = Validator.from_url("memory://bench-gate")
    gate = build_gate(validator, proxy="nginx", trusted_proxies=["127.0.0.1"])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def seeding() -> Message:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await seed(Admin(validator.store))
                return message

            await gate(scope, seeding, send)
        else:
            await gate(scope, receive, send)

    return app


# ---------------------------------------------------------------------------------------- processes


def _uvicorn(target: str, port: int, cpu: int | None, *, factory: bool) -> Process:
    return Process(uvicorn_command(target, port, cpu, factory=factory), NAME, target.rsplit(":", 1)[1])


def _gate_server(kind: str, port: int, cpu: int | None) -> Process:
    command = [*taskset(cpu), sys.executable, "-m", "benchmarks._gate_server", kind, str(port)]
    return Process(command, NAME, f"gate-{kind}")


def _nginx(gate_port: int, upstream_port: int, port: int, cpu: int | None) -> tuple[Process, Path]:
    """nginx running the documented snippet, with a main configuration of its own."""
    directory = Path(tempfile.mkdtemp(prefix="tav-bench-nginx-"))
    directory.chmod(0o755)  # workers run as `nobody` when nginx starts as root
    site = SNIPPET.read_text()
    for literal, value in {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:9000;": f"server 127.0.0.1:{gate_port};",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream_port};",
    }.items():
        if literal not in site:
            raise RuntimeError(f"gate: docs/deploying/nginx.conf no longer contains {literal!r}")
        site = site.replace(literal, value)
    (directory / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\nerror_log stderr warn;\n"
        f"events {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n{temp}\n"
        f"    include {directory / 'site.conf'};\n}}\n"
    )  # fmt: skip
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    assert nginx is not None
    command = [
        *taskset(cpu),
        nginx,
        "-p",
        str(directory),
        "-c",
        str(directory / "nginx.conf"),
        "-e",
        "stderr",
    ]
    return Process(command, NAME, "nginx"), directory


# ---------------------------------------------------------------------------------------- in process

IN_PROCESS = "in process"
_scope = wrk_scope(9000, "/check", GATE_HEADERS)  # wrk's forward-auth request
_receive = empty_body


async def _in_process(requests: int, runs: int) -> dict[str, list[float]]:
    """ns of this thread's CPU time per request through the gate's ASGI callable and through the
    trivial upstream app, taking turns run by run, fake receive and send."""
    from validator import Validator
    from validator.admin.api import Admin
    from validator.web.demo import seed
    from validator.web.gate import build_gate

    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    validator = Validator.from_url("memory://bench-gate-in-process")
    await validator.connect()
    await seed(Admin(validator.store))
    apps: dict[str, ASGIApp] = {
        UPSTREAM: upstream,
        GATE: build_gate(validator, proxy="nginx", trusted_proxies=["127.0.0.1"]),
    }
    samples: dict[str, list[float]] = {name: [] for name in apps}
    try:
        for app in apps.values():
            await app(_scope(), _receive, send)
        for run_ in range(runs):
            for name in interleaved(list(apps), run_):
                app = apps[name]
                started = time.thread_time_ns()
                for _ in range(requests):
                    await app(_scope(), _receive, send)
                samples[name].append((time.thread_time_ns() - started) / requests)
        if set(statuses) != {200}:
            raise RuntimeError(f"gate: in process, answers {sorted(set(statuses))}, not only 200")
    finally:
        await validator.close()
    return samples


# ---------------------------------------------------------------------------------------- load

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(
    url: str, headers: Sequence[str], seconds: int, connections: int, cpu: int | None
) -> tuple[float, int, float]:
    """Requests/s, requests counted and p50 latency in ms; raises on any non-2xx or socket error."""
    command = [*taskset(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"gate: wrk saw failures on {url}:\n{out}")
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    count = re.search(r"([0-9]+) requests in", out)
    p50 = re.search(r"50%\s+([0-9.]+)(us|ms|s)\b", out)
    if rate is None or count is None or p50 is None:
        raise RuntimeError(f"gate: could not read wrk's output:\n{out}")
    return float(rate.group(1)), int(count.group(1)), float(p50.group(1)) * _UNITS[p50.group(2)]


def run(config: Config) -> list[Result]:
    if shutil.which("wrk") is None:
        raise SystemExit("gate: needs wrk (scripts/install-system installs it)")
    seconds = config.pick(5, 1)
    runs = config.runs_or(7, 1)
    pin = can_pin() and shutil.which("taskset") is not None
    server_cpu, load_cpu = (0, 1) if pin else (None, None)
    with_nginx = (
        shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    ) is not None
    with_nginx = with_nginx and SNIPPET.exists()
    requests = config.pick(200_000, 20_000)
    progress(NAME, f"in process: {runs} runs of {requests:,} requests")
    in_process = run_async(_in_process(requests, runs))
    upstream_port, gate_port, nginx_port = free_port(), free_port(), free_port()
    instant_port, instant_nginx_port = free_port(), free_port()
    processes = {
        UPSTREAM: _uvicorn("benchmarks.gate:upstream", upstream_port, server_cpu, factory=False),
        GATE: _gate_server("seeded", gate_port, server_cpu),
    }
    nginx_dir: Path | None = None
    instant_dir: Path | None = None
    # (url, headers, process whose CPU is counted) per throughput case
    targets: dict[str, tuple[str, Sequence[str], str]] = {
        UPSTREAM: (f"http://127.0.0.1:{upstream_port}/v1/hello", (), UPSTREAM),
        GATE: (f"http://127.0.0.1:{gate_port}/check", GATE_HEADERS, GATE),
    }
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    p50: dict[str, list[float]] = {}
    try:
        if with_nginx:
            processes["nginx"], nginx_dir = _nginx(gate_port, upstream_port, nginx_port, server_cpu)
            targets[ALONE] = (f"http://127.0.0.1:{nginx_port}/status", (TOKEN_HEADER,), "nginx")
            targets[GATED] = (f"http://127.0.0.1:{nginx_port}/v1/hello", (TOKEN_HEADER,), "nginx")
            processes["instant"] = _gate_server("instant", instant_port, server_cpu)
            processes["nginx-instant"], instant_dir = _nginx(
                instant_port, upstream_port, instant_nginx_port, server_cpu
            )
            url = f"http://127.0.0.1:{instant_nginx_port}/v1/hello"
            targets[INSTANT] = (url, (TOKEN_HEADER,), "nginx-instant")
        for name, (url, headers, _) in targets.items():
            processes[targets[name][2]].wait(url, headers)
        for name, (url, headers, _) in targets.items():
            progress(NAME, f"warming {name}")
            _wrk(url, headers, 1, CONNECTIONS, load_cpu)
        for run_ in range(runs):
            for name in interleaved(list(targets), run_):
                url, headers, owner = targets[name]
                progress(NAME, f"run {run_ + 1}/{runs}: {name}, {seconds} s")
                before = processes[owner].cpu_seconds()
                rate, count, _ = _wrk(url, headers, seconds, CONNECTIONS, load_cpu)
                after = processes[owner].cpu_seconds()
                rates.setdefault(name, []).append(rate)
                if before is not None and after is not None and not owner.startswith("nginx"):
                    cpu.setdefault(name, []).append((after - before) / count * 1e6)
            for name in interleaved([UPSTREAM, *([ALONE, GATED, INSTANT] if with_nginx else [])], run_):
                url, headers, _ = targets[name]
                p50.setdefault(name, []).append(_wrk(url, headers, seconds, 1, load_cpu)[2])
    finally:
        for process in processes.values():
            process.stop()
        for directory in (nginx_dir, instant_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
    placement = "servers on CPU 0, wrk on CPU 1 (taskset)" if pin else "not pinned"
    note = f"wrk -t1 -c{CONNECTIONS}, {seconds} s per run; {placement}; token demo-server, allowed"
    results = [
        Result(NAME, UPSTREAM, "requests/s", rates[UPSTREAM], note=note),
        Result(NAME, GATE, "requests/s", rates[GATE], vs=(UPSTREAM,), note="target: >= 10,000/s on one core"),
    ]
    if len(cpu) == 2:
        unit = "µs server CPU/request"
        results += [
            Result(NAME, f"CPU: {UPSTREAM}", unit, cpu[UPSTREAM], higher_is_better=False),
            Result(NAME, f"CPU: {GATE}", unit, cpu[GATE], higher_is_better=False, vs=(f"CPU: {UPSTREAM}",)),
            # What one core would serve if the server had it to itself: other work on a shared
            # machine lowers requests/s far more than the server's own CPU per request.
            Result(
                NAME, f"per core: {GATE}", "answers per CPU-second", [1e6 / c for c in cpu[GATE]],
                vs=(f"per core: {UPSTREAM}",), note="1e6 / CPU per request; target: >= 20,000",
            ),
            Result(NAME, f"per core: {UPSTREAM}", "answers per CPU-second", [1e6 / c for c in cpu[UPSTREAM]]),
        ]  # fmt: skip
    added_here = [g - u for g, u in zip(in_process[GATE], in_process[UPSTREAM], strict=True)]
    results += [
        Result(
            NAME, f"{IN_PROCESS}: {UPSTREAM}", "ns CPU/request", in_process[UPSTREAM], higher_is_better=False,
            note=f"{requests:,} requests per run through the ASGI callable, fake receive/send",
        ),
        Result(
            NAME, f"{IN_PROCESS}: {GATE}", "ns CPU/request", in_process[GATE], higher_is_better=False,
            vs=(f"{IN_PROCESS}: {UPSTREAM}",),
        ),
        Result(
            NAME, f"{IN_PROCESS}: added by the gate", "ns CPU/request", added_here, higher_is_better=False
        ),
    ]  # fmt: skip
    results.append(Result(NAME, f"{P50}: {UPSTREAM}", "ms", p50[UPSTREAM], higher_is_better=False))
    if with_nginx:
        added = [g - a for g, a in zip(p50[GATED], p50[ALONE], strict=True)]
        gated_p50, alone_p50 = f"{P50}: {GATED}", f"{P50}: {ALONE}"
        results += [
            Result(NAME, ALONE, "requests/s", rates[ALONE], note="docs/deploying/nginx.conf, one worker"),
            Result(
                NAME, GATED, "requests/s", rates[GATED], vs=(ALONE, INSTANT),
                note="target: >= 0.7x nginx -> upstream",
            ),
            Result(NAME, INSTANT, "requests/s", rates[INSTANT], vs=(ALONE,)),
            Result(NAME, alone_p50, "ms", p50[ALONE], higher_is_better=False),
            Result(NAME, gated_p50, "ms", p50[GATED], higher_is_better=False, vs=(alone_p50,)),
            Result(NAME, f"{P50}: {INSTANT}", "ms", p50[INSTANT], higher_is_better=False, vs=(alone_p50,)),
            Result(
                NAME, f"{P50}: added by the gate", "ms", added, higher_is_better=False,
                vs=(f"{P50}: {UPSTREAM}",), note="target: at most one upstream's p50 (ratio <= 1)",
            ),
        ]  # fmt: skip
    else:
        results[0].note += "; nginx not installed: no nginx figures"
    return results


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
