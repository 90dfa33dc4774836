"""import: tokens/s for a bulk import of 100,000 tokens (5,000 with --quick) into a real redis-server.

Ours is the command line, run as a subprocess exactly as an operator would:
`python -m validator --store URL --key-prefix P --json import FILE` (which validates and
normalises every line with `Admin.prepare`, then writes with `Admin.put_many`: one Lua call per
record, pipelined 500 records at a time, with history). The file is JSON Lines, one token a line
with both restrictions on, 5 distinct domains and 5 IPs (no entry repeats across tokens: the
worst case for the CLI's normalisation cache). Figures are records / wall-clock seconds of the
whole process, Python start-up included; the note adds the CLI's own reported seconds.

Baseline in the same run, also a subprocess: `benchmarks._plain_import`, what a team would write
with plain redis-py (same keyed hash and keys, HSET + SADD x2 per record in pipelines of 500, no
validation, no Lua, no history). Each run writes under a fresh key prefix into an emptied server.

With `--store redis+cluster://...` (or `redis+sentinel://...`) both import into that Redis: the
CLI through the library's cluster client, the baseline through redis-py's `RedisCluster`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from benchmarks._data import SECRET, domains, ips, token
from benchmarks._harness import (
    ROOT,
    Config,
    Result,
    interleaved,
    module_main,
    prefix_pattern,
    progress,
    redis_server,
    unique_prefix,
)
from benchmarks._targets import flush, forget

NAME = "import"
OURS = "CLI import (python -m validator import)"
PLAIN = "plain redis-py pipelines (no validation)"


def _write_file(path: Path, n: int) -> None:
    encoder = msgspec.json.Encoder()
    with path.open("wb") as file:
        for i in range(n):
            line = {
                "token": token(i, "import"),
                "domain_enabled": True,
                "ip_enabled": True,
                "domains": domains(i),
                "ips": ips(i),
            }
            file.write(encoder.encode(line) + b"\n")


def _run(command: list[str]) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "VALIDATOR_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter_ns()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=1800
    )
    elapsed = (time.perf_counter_ns() - start) / 1e9
    if done.returncode != 0:
        raise RuntimeError(f"import: {command[2]} exited with {done.returncode}: {done.stderr[-2000:]}")
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return elapsed, report


def run(config: Config) -> list[Result]:
    n = config.pick(100_000, 5_000)
    runs = config.runs_or(3, 1)
    samples: dict[str, list[float]] = {}
    own: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="tav-import-") as tmp,
        redis_server(config, multi_node=True) as server,
    ):
        path = Path(tmp) / "tokens.jsonl"
        _write_file(path, n)
        progress(NAME, f"{n:,} records, {path.stat().st_size / 1e6:.1f} MB")
        for run_ in range(runs):
            for name in interleaved([OURS, PLAIN], run_):
                progress(NAME, f"run {run_ + 1}/{runs}: {name}")
                prefix = unique_prefix(NAME)
                if name == OURS:
                    base = [sys.executable, "-m", "validator", "--store", server.url, "--key-prefix", prefix]
                    _run([*base, "--json", "init", "--force"])  # a new prefix is a new store: untimed
                    command = [*base, "--json", "import", str(path)]
                else:
                    command = [
                        sys.executable,
                        "-m",
                        "benchmarks._plain_import",
                        server.url,
                        SECRET,
                        prefix,
                        str(path),
                    ]
                elapsed, report = _run(command)
                if report.get("records") != n or report.get("created", n) != n:
                    raise RuntimeError(f"import: {name} reported {report}, expected {n} records created")
                samples.setdefault(name, []).append(n / elapsed)
                if name == OURS:
                    own.append(float(report["seconds"]))  # type: ignore[arg-type]
                if server.pid is not None:
                    flush(server.url)
                else:
                    forget(server.url, [prefix_pattern(prefix)])
    own_rates = ", ".join(f"{n / s:,.0f}" for s in own)
    return [
        Result(NAME, PLAIN, "tokens/s", samples[PLAIN]),
        Result(
            NAME,
            OURS,
            "tokens/s",
            samples[OURS],
            vs=(PLAIN,),
            note=f"{n:,} tokens per run, wall clock of the subprocess; "
            f"by the CLI's own reported seconds (without start-up): {own_rates} tokens/s",
        ),
    ]


if __name__ == "__main__":
    module_main(NAME, __doc__, run)
