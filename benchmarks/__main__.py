"""`python -m benchmarks [NAME ...] [--json FILE] [--quick] [--runs N] [--store URL]`.

Runs each named benchmark (default: all) in a fresh process, one after the other, then prints
the machine, one table of every result and the notes. Exit status 1 if any benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS
from benchmarks._harness import ROOT, Result, describe, environment, notes, table, write_json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of token-access-validator against named baselines, measured in the same run.",
        epilog="benchmarks: " + ", ".join(BENCHMARKS),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the environment and results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few runs: a smoke test (< 1 min)"
    )
    parser.add_argument(
        "--runs", type=int, metavar="N", help="runs per figure (default: 3-9 by benchmark, 1-3 with --quick)"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="use this Redis instead of starting throwaway redis-servers (keys get a unique prefix, "
        "nothing is flushed; propagation always starts its own; stampede's counts include other clients)",
    )
    return parser


def _run_one(name: str, args: argparse.Namespace) -> tuple[float, list[Result] | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="tav-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", BENCHMARKS[name], "--json", str(out), "--no-table"]
        if args.quick:
            command.append("--quick")
        if args.runs is not None:
            command += ["--runs", str(args.runs)]
        if args.store:
            command += ["--store", args.store]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or not out.exists():
            return elapsed, None, f"exited with status {done.returncode}"
        data: dict[str, Any] = json.loads(out.read_text())
        return elapsed, [Result.from_dict(r) for r in data["results"]], None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        _parser().error(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    names = args.names or list(BENCHMARKS)
    env = environment()
    mode = "--quick (smoke sizes: not for quoting)" if args.quick else "full"
    print(f"token-access-validator benchmarks, {mode} run\n\n{describe(env)}\n", flush=True)
    started = time.perf_counter()
    results: list[Result] = []
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        elapsed, found, error = _run_one(name, args)
        report[name] = {"seconds": round(elapsed, 2)}
        if error is not None or found is None:
            report[name]["error"] = error
            print(f"[{name}] FAILED: {error}", file=sys.stderr, flush=True)
            continue
        report[name]["results"] = [r.as_dict() for r in found]
        results += found
        print(f"[{name}] done in {elapsed:.1f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    print(table(results))
    if notes(results):
        print("\nNotes:\n" + notes(results))
    each = ", ".join(f"{name} {report[name]['seconds']:.1f} s" for name in names)
    print(f"\nTotal: {total:.1f} s ({each})")
    failed = [name for name in names if "error" in report[name]]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    if args.json:
        write_json(
            args.json,
            {
                "environment": env,
                "quick": args.quick,
                "runs": args.runs,
                "seconds": round(total, 2),
                "benchmarks": report,
                "results": [r.as_dict() for r in results],
            },
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
