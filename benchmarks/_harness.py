"""What every benchmark shares: settings, timing, results with median/spread/ratios, the machine, output.

A benchmark module defines `NAME`, a docstring saying what it measures, and
`run(config) -> list[Result]`. Each result holds every run's figure (`samples`); the median is
the figure, min-max the spread, and `vs` names results of the same run to compute ratios against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from benchmarks import MULTI_NODE
from benchmarks._targets import Kind, forget, kind

if TYPE_CHECKING:
    from validator import Validator

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Settings of one benchmark run (`python -m benchmarks --help`)."""

    quick: bool = False
    runs: int | None = None
    store: str | None = None

    def runs_or(self, full: int, quick: int) -> int:
        """The number of runs per figure: --runs if given, else `quick` or `full`."""
        if self.runs is not None:
            return max(1, self.runs)
        return quick if self.quick else full

    def pick(self, full: int, quick: int) -> int:
        """A size for the full run or for --quick."""
        return quick if self.quick else full


@dataclass
class Result:
    """One figure: every run's value, and ratios to other results of the same run.

    `ratios` maps a baseline's `case` to median(self) / median(baseline); for a unit where lower
    is better that is "times the baseline's cost", for higher-is-better "times its throughput".
    `ratio_ranges` gives the lowest and highest ratio of the runs taken one by one (run i of
    both alternatives ran back to back), when both have as many runs.
    """

    benchmark: str
    case: str
    unit: str
    samples: list[float]
    higher_is_better: bool = True
    vs: tuple[str, ...] = ()
    ratios: dict[str, float] = field(default_factory=dict)
    ratio_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median=self.median, min=self.low, max=self.high, runs=len(self.samples))
        data["vs"] = list(self.vs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(
            benchmark=data["benchmark"],
            case=data["case"],
            unit=data["unit"],
            samples=list(data["samples"]),
            higher_is_better=data["higher_is_better"],
            vs=tuple(data["vs"]),
            ratios=dict(data["ratios"]),
            ratio_ranges={k: (v[0], v[1]) for k, v in data.get("ratio_ranges", {}).items()},
            note=data.get("note", ""),
        )


def with_ratios(results: list[Result]) -> list[Result]:
    """Fill each result's `ratios` from the results its `vs` names (same benchmark, same run)."""
    by_case = {r.case: r for r in results}
    for result in results:
        for name in result.vs:
            baseline = by_case[name]
            if baseline.median:
                result.ratios[name] = result.median / baseline.median
            if len(result.samples) == len(baseline.samples) and all(baseline.samples):
                paired = [a / b for a, b in zip(result.samples, baseline.samples, strict=True)]
                result.ratio_ranges[name] = (min(paired), max(paired))
    return results


# ---------------------------------------------------------------------------------------- timing


def seconds(ns: int) -> float:
    return ns / 1e9


@contextlib.contextmanager
def timer() -> Iterator[list[int]]:
    """`with timer() as t: ...` then `t[0]` is the elapsed time in nanoseconds (perf_counter_ns)."""
    elapsed = [0]
    start = time.perf_counter_ns()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter_ns() - start


def interleaved(order: Sequence[str], run: int) -> list[str]:
    """`order` rotated by `run`: candidates and baselines take turns going first (ABAB...), so a
    noisy neighbour that comes and goes hits each of them alike."""
    shift = run % len(order)
    return [*order[shift:], *order[:shift]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def progress(benchmark: str, message: str) -> None:
    print(f"[{benchmark}] {message}", file=sys.stderr, flush=True)


def run_async(main: Coroutine[Any, Any, T], limit: float = 1800.0) -> T:
    """Run a benchmark's coroutine on uvloop. If it is not done within `limit` seconds, print
    every task's stack to stderr (where it hangs) and cancel it; SIGUSR1 prints them any time."""
    import uvloop

    def dump() -> None:
        for running in asyncio.all_tasks():
            running.print_stack(file=sys.stderr)

    async def watched() -> T:
        # `kill -USR1 <pid>` shows where every task waits, without stopping the benchmark.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
        task = asyncio.ensure_future(main)
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            print(f"benchmark still running after {limit:.0f} s; its tasks:", file=sys.stderr)
            dump()
            task.cancel()
        return await task

    return uvloop.run(watched())


@contextlib.asynccontextmanager
async def connected(validator: Validator, benchmark: str, close_within: float = 10.0) -> AsyncIterator[None]:
    """`async with validator`, except that a `close()` that does not return within
    `close_within` seconds is reported on stderr and given up on, not waited for forever.

    Seen with the library: `close()` waited forever for its invalidation listener, whose
    `pubsub.get_message()` had swallowed the cancellation (docs/benchmarks.md, Caveats).
    """
    await validator.connect()
    try:
        yield
    finally:
        closing = asyncio.ensure_future(validator.close())
        done, _ = await asyncio.wait({closing}, timeout=close_within)
        if not done:
            progress(
                benchmark,
                f"WARNING: Validator.close() did not return within {close_within:.0f} s "
                "(its invalidation listener ignored the cancellation); going on without it",
            )
            closing.cancel()
            await asyncio.wait({closing}, timeout=close_within)


# ---------------------------------------------------------------------------------------- CPUs


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def can_pin() -> bool:
    """Whether server and load can go on different cores (two or more, and taskset for children)."""
    return len(cpus()) >= 2


@contextlib.contextmanager
def pinned(pid: int, cpu: int | None) -> Iterator[None]:
    """Run process `pid` (0: this one) on one CPU for the block, if `cpu` is not None."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(pid)
    os.sched_setaffinity(pid, {cpu})
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, before)


# ---------------------------------------------------------------------------------------- servers


def taskset(cpu: int | None) -> list[str]:
    """The prefix that runs a command on `cpu` (nothing when not pinning)."""
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def uvicorn_command(target: str, port: int, cpu: int | None, *, factory: bool) -> list[str]:
    """uvicorn serving `target` on 127.0.0.1:`port` as the benchmarks run it: uvloop, httptools,
    one worker, no access log, no proxy headers."""
    return [
        *taskset(cpu), sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), target,
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--workers", "1", "--no-access-log", "--log-level", "warning", "--no-proxy-headers",
    ]  # fmt: skip


def wrk_scope(port: int, path: str, headers: Sequence[str]) -> Callable[[], dict[str, Any]]:
    """For in-process runs: a maker of the scope uvicorn (httptools) builds for wrk's `GET path`
    to 127.0.0.1:`port` with `headers` ("Name: value"), a fresh one each call as uvicorn's."""
    sent = [(b"host", f"127.0.0.1:{port}".encode())] + [
        (name.lower().encode(), value.encode()) for name, value in (h.split(": ", 1) for h in headers)
    ]
    raw_path = path.encode()

    def scope() -> dict[str, Any]:
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
            "server": ("127.0.0.1", port), "client": ("127.0.0.1", 50000), "scheme": "http",
            "method": "GET", "root_path": "", "path": path, "raw_path": raw_path,
            "query_string": b"", "headers": list(sent), "state": {},
        }  # fmt: skip

    return scope


async def empty_body() -> dict[str, Any]:
    """For in-process runs: the `receive` of a request without a body."""
    return {"type": "http.request", "body": b"", "more_body": False}


class Process:
    """A server a benchmark runs from the repository (benchmarks importable), its output in a
    temporary log that `stop` removes. Errors name `benchmark` and `what`."""

    def __init__(self, command: list[str], benchmark: str, what: str) -> None:
        import tempfile

        self.benchmark, self.what = benchmark, what
        self.log = Path(tempfile.mkstemp(prefix=f"tav-bench-{what}-", suffix=".log")[1])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)

    def wait(self, url: str, headers: Sequence[str] = (), timeout: float = 30.0) -> None:
        """Until `url` answers 200 to a GET with `headers` ("Name: value"), bounded."""
        from tests.processes import wait_answering

        sent = dict(header.split(": ", 1) for header in headers)
        what = f"{self.benchmark}: {self.what}"
        wait_answering(url, self.process, what, self.output, timeout=timeout, headers=sent)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

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
        from tests.processes import stop_process

        stop_process(self.process)
        self.log.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class Server:
    """The Redis of one benchmark: `kind` "redis" (one server), "cluster" or "sentinel"; `host`
    and `port` name a single server only, and `pid` is None for one given with --store."""

    url: str
    kind: Kind
    host: str
    port: int
    pid: int | None


class UnsupportedStore(SystemExit):
    """--store names a Redis Cluster or Sentinel for a benchmark that measures one server."""


@contextlib.contextmanager
def redis_server(config: Config, *, multi_node: bool = False) -> Iterator[Server]:
    """A Redis server for one benchmark: --store if given, else a throwaway redis-server (never
    the system one on 6379), stopped and removed afterwards. `multi_node`: the benchmark also
    runs on a Redis Cluster or a Sentinel-managed master (`redis+cluster://`, `redis+sentinel://`)."""
    if config.store:
        target = kind(config.store)
        if target != "redis" and not multi_node:
            raise UnsupportedStore(
                f"this benchmark measures one Redis server; --store {target} URLs serve "
                f"{', '.join(MULTI_NODE)} only"
            )
        parts = urlsplit(config.store) if target == "redis" else None
        host = (parts.hostname if parts else None) or "127.0.0.1"
        port = (parts.port if parts else None) or 6379
        try:
            yield Server(config.store, target, host, port, None)
        finally:
            _forget_prefixes(config.store)
        return
    from tests.redis_servers import RedisProcess

    process = RedisProcess()
    process.start()
    assert process.process is not None
    try:
        yield Server(process.url, "redis", "127.0.0.1", process.port, process.process.pid)
    finally:
        process.cleanup()


_PREFIXES: list[str] = []


def unique_prefix(benchmark: str) -> str:
    """A key prefix of its own per run, so nothing needs flushing (and --store is safe to use:
    the keys under it are deleted when the benchmark is done with the server)."""
    prefix = f"bench:{benchmark}:{os.getpid()}:{time.monotonic_ns()}:"
    _PREFIXES.append(prefix)
    return prefix


def prefix_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every key the library keeps under `prefix`, including those
    beside it (`<prefix>-denials:...`)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix.rstrip(":")) + "*"


def _forget_prefixes(url: str) -> None:
    patterns = [prefix_pattern(prefix) for prefix in _PREFIXES]
    _PREFIXES.clear()
    forget(url, patterns)


# ---------------------------------------------------------------------------------------- machine


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _command_output(*command: str) -> str:
    if shutil.which(command[0]) is None:
        return "not found"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    out = _command_output("git", "-C", str(ROOT), *args)
    return out if out not in ("not found", "unknown") else ""


def environment() -> dict[str, str]:
    """The machine and every version a figure depends on."""
    redis_server_version = _command_output("redis-server", "--version")
    match = re.search(r"v=(\S+)", redis_server_version)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "validator")
    load: list[str] = []
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} (usable: {len(cpus())})",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "library": f"token-access-validator {_version('token-access-validator')}, git {commit or '?'}"
        + (" with uncommitted changes in validator/" if dirty else ""),
        "redis-server": match.group(1) if match else redis_server_version,
        "redis-py": _version("redis"),
        "hiredis": _version("hiredis"),
        "uvloop": _version("uvloop"),
        "uvicorn": _version("uvicorn"),
        "httptools": _version("httptools"),
        "starlette": _version("starlette"),
        "msgspec": _version("msgspec"),
        "wrk": _command_output("wrk", "-v").split(" Copyright")[0],
        "taskset": "yes" if shutil.which("taskset") else "no",
        "load average at start": " ".join(load) if load else "unknown",
    }


# ---------------------------------------------------------------------------------------- output


def _number(value: float) -> str:
    magnitude = abs(value)
    if float(value).is_integer():
        return f"{value:,.0f}"
    if magnitude >= 100_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _short(name: str, case: str) -> str:
    """A baseline's name without the group it shares with the case ("1 task(s): raw" -> "raw")."""
    group, sep, rest = name.partition(": ")
    return rest if sep and case.startswith(group + sep) else name


def _ratios(result: Result, baselines: set[tuple[str, str]]) -> str:
    if result.vs:
        parts = []
        for name, ratio in result.ratios.items():
            low, high = result.ratio_ranges.get(name, (ratio, ratio))
            runs = (
                f" (runs {low:.3g}-{high:.3g})"
                if len(result.samples) > 1 and (low, high) != (ratio, ratio)
                else ""
            )
            parts.append(f"{ratio:.3g}x {_short(name, result.case)}{runs}")
        return "; ".join(parts)
    return "baseline" if (result.benchmark, result.case) in baselines else "-"


def table(results: Sequence[Result]) -> str:
    """The results as a Markdown table (readable in a terminal, pasted as is into the docs)."""
    baselines = {(r.benchmark, name) for r in results for name in r.vs}
    header = (
        "benchmark",
        "case",
        "median",
        "spread (min-max)",
        "unit",
        "runs",
        "ratio: median/median (per run)",
    )
    rows = [
        (
            r.benchmark,
            r.case,
            _number(r.median),
            f"{_number(r.low)}-{_number(r.high)}",
            r.unit + (" (higher is better)" if r.higher_is_better else " (lower is better)"),
            str(len(r.samples)),
            _ratios(r, baselines),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows
    )
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> str:
    return "\n".join(f"- {r.benchmark} / {r.case}: {r.note}" for r in results if r.note)


def describe(env: dict[str, str]) -> str:
    width = max(map(len, env))
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in env.items())


def write_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------------------- one module


def module_main(name: str, doc: str | None, run: Callable[[Config], list[Result]]) -> None:
    """`python -m benchmarks.<module>`: run one benchmark in this process, print it, maybe write JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--store", metavar="URL")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = Config(quick=args.quick, runs=args.runs, store=args.store)
    started = time.perf_counter()
    results = with_ratios(run(config))
    elapsed = time.perf_counter() - started
    if args.json:
        write_json(args.json, {"name": name, "seconds": elapsed, "results": [r.as_dict() for r in results]})
    if not args.no_table:
        print(table(results))
        if notes(results):
            print("\n" + notes(results))
