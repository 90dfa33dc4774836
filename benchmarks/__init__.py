"""The benchmark suite: `python -m benchmarks [NAME ...] [--json FILE] [--quick] [--runs N]`.

Each benchmark is a small module whose docstring says what it measures; each runs in a process
of its own (also alone, as `python -m benchmarks.<module>`), compares named alternatives in the
same run, and reports the median and spread over several runs with ratios to its baselines.
Results and method: docs/benchmarks.md.
"""

from __future__ import annotations

__all__ = ["BENCHMARKS", "MULTI_NODE"]

# Benchmark name -> module (`import` is a Python keyword, hence `bulk_import`).
BENCHMARKS: dict[str, str] = {
    "hotpath": "benchmarks.hotpath",
    "miss": "benchmarks.miss",
    "naive": "benchmarks.naive",
    "middleware": "benchmarks.middleware",
    "stampede": "benchmarks.stampede",
    "propagation": "benchmarks.propagation",
    "memory": "benchmarks.memory",
    "import": "benchmarks.bulk_import",
    "outage": "benchmarks.outage",
    "denials": "benchmarks.denials",
    "gate": "benchmarks.gate",
    "scaling": "benchmarks.scaling",
}

# The benchmarks that also run on a Redis Cluster or a Sentinel-managed master (`--store
# redis+cluster://...`, `redis+sentinel://...`); the others measure one server (its memory, its
# command counts, its death) and refuse such a URL.
MULTI_NODE: tuple[str, ...] = ("hotpath", "miss", "naive", "import")
