"""`python -m benchmarks [NAME ...] [--json FILE] [--quick] [--runs N] [--store URL ...]`.

Runs each named benchmark (default: all) in a fresh process, one after the other, then prints
the machine, one table of every result and the notes. Exit status 1 if any benchmark failed.

With several `--store`s, each benchmark runs once per store, one after the other; each case is
named after its store ("standalone: ...", "cluster: ...", "sentinel: ...") and compared with the
same case on the first store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS, MULTI_NODE
from benchmarks._harness import (
    ROOT,
    Result,
    describe,
    environment,
    notes,
    table,
    with_ratios,
    write_json,
)
from benchmarks._targets import kind


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
        action="append",
        help="use this Redis instead of starting throwaway redis-servers (keys get a unique prefix, "
        "nothing is flushed; propagation always starts its own; stampede's counts include other "
        f"clients); redis+cluster:// and redis+sentinel:// URLs serve {', '.join(MULTI_NODE)}. "
        f"Repeat to run on each and compare with the first; '{LOCAL}' is a throwaway redis-server",
    )
    return parser


LOCAL = "local"


def _label(store: str | None, taken: set[str]) -> str:
    """The name a store's cases go by when there are several: its kind, numbered if repeated."""
    base: str = "standalone" if store is None or kind(store) == "redis" else kind(store)
    label, n = base, 1
    while label in taken:
        n += 1
        label = f"{base} #{n}"
    taken.add(label)
    return label


def _named(results: list[Result], label: str, first: str | None) -> list[Result]:
    """`results` with every case under `label`, each compared also with its case under `first`."""
    return [
        replace(
            r,
            case=f"{label}: {r.case}",
            vs=tuple(f"{label}: {name}" for name in r.vs) + ((f"{first}: {r.case}",) if first else ()),
            ratios={},
            ratio_ranges={},
        )
        for r in results
    ]


def _run_one(
    name: str, args: argparse.Namespace, store: str | None
) -> tuple[float, list[Result] | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="tav-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", BENCHMARKS[name], "--json", str(out), "--no-table"]
        if args.quick:
            command.append("--quick")
        if args.runs is not None:
            command += ["--runs", str(args.runs)]
        if store is not None:
            command += ["--store", store]
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
    stores: list[str | None] = [None if url == LOCAL else url for url in args.store or [None]]
    if any(store is not None and kind(store) != "redis" for store in stores):
        refused = [name for name in args.names if name not in MULTI_NODE]
        if refused:
            _parser().error(
                f"{', '.join(refused)} measure(s) one Redis server: a cluster or sentinel --store "
                f"serves {', '.join(MULTI_NODE)}"
            )
        names = args.names or list(MULTI_NODE)
    else:
        names = args.names or list(BENCHMARKS)
    taken: set[str] = set()
    labels = [_label(store, taken) for store in stores]
    env = environment()
    mode = "--quick (smoke sizes: not for quoting)" if args.quick else "full"
    print(f"token-access-validator benchmarks, {mode} run\n\n{describe(env)}\n", flush=True)
    started = time.perf_counter()
    results: list[Result] = []
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        report[name] = {"seconds": 0.0}
        found_here: list[Result] = []
        for store, label in zip(stores, labels, strict=True):
            elapsed, found, error = _run_one(name, args, store)
            report[name]["seconds"] = round(report[name]["seconds"] + elapsed, 2)
            where = f" on {label}" if len(stores) > 1 else ""
            if error is not None or found is None:
                report[name].setdefault("error", f"{error}{where}")
                print(f"[{name}] FAILED{where}: {error}", file=sys.stderr, flush=True)
                continue
            if len(stores) > 1:
                # Compared with the first store's case, if the first store ran it.
                first = labels[0] if label != labels[0] and found_here else None
                found = _named(found, label, first)
            found_here += found
            print(f"[{name}] done{where} in {elapsed:.1f} s", file=sys.stderr, flush=True)
        if len(stores) > 1:
            found_here = with_ratios(found_here)
        report[name]["results"] = [r.as_dict() for r in found_here]
        results += found_here
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
                "stores": {label: store or LOCAL for label, store in zip(labels, stores, strict=True)},
                "seconds": round(total, 2),
                "benchmarks": report,
                "results": [r.as_dict() for r in results],
            },
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
