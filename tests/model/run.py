"""Run the stateful machine with a profile: the small one of the normal test run, or a soak.

`python -m tests.model.run --minutes N [--cluster]` (what `scripts/soak` runs) explores
sequences for N minutes (on one server, or with --cluster on a 3-primary Cluster) and prints
"steps: S, sequences: Q, wrong allows: W, unavailable cached checks outside the affected
shard: U", then the availability and shutdown figures; it exits 1 at the first broken
invariant, after printing the shrunk sequence that breaks it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.model.base import Base
from tests.model.cluster import ClusterSequences, ClusterWorld
from tests.model.harness import World, secret_in_environment
from tests.model.machine import Sequences as Plain
from tests.model.machine import Stats


@dataclass(frozen=True)
class Profile:
    examples: int  # sequences per Hypothesis run
    steps: int  # steps per sequence at most
    seconds: float  # the whole run stops starting steps after this long
    repeat: bool  # start another Hypothesis run while time remains


PROFILES = {
    # The normal test run: a few sequences, well inside CI's limit even on a slow machine.
    "ci": Profile(examples=25, steps=40, seconds=100.0, repeat=False),
    "soak": Profile(examples=5, steps=60, seconds=600.0, repeat=True),
    # The Cluster machine (tests.model.cluster): its faults take seconds each.
    "cluster-ci": Profile(examples=3, steps=12, seconds=45.0, repeat=False),
    "cluster": Profile(examples=4, steps=25, seconds=600.0, repeat=True),
}


def run_machine(
    world: World | ClusterWorld,
    *,
    profile: str = "ci",
    seconds: float | None = None,
    machine: type[Base] | None = None,
) -> Stats:
    """Run `Sequences` (or `machine`: `ClusterSequences` on a `ClusterWorld`) against `world`;
    raises the first broken invariant (shrunk)."""
    target: type[Base] = machine or Plain
    chosen = PROFILES[profile]
    # Overrides for exploring by hand: TAV_MODEL_EXAMPLES, TAV_MODEL_STEPS.
    examples = int(os.environ.get("TAV_MODEL_EXAMPLES", chosen.examples))
    steps = int(os.environ.get("TAV_MODEL_STEPS", chosen.steps))
    target.world = world  # type: ignore[assignment]  # a ClusterWorld for ClusterSequences
    target.stats = Stats()
    target.deadline = time.monotonic() + (seconds if seconds is not None else chosen.seconds)
    with secret_in_environment():
        while True:
            run_state_machine_as_test(
                target,
                settings=settings(
                    max_examples=examples,
                    stateful_step_count=steps,
                    deadline=None,
                    database=None,
                    print_blob=True,
                    suppress_health_check=list(HealthCheck),
                ),
            )
            if not chosen.repeat or time.monotonic() >= target.deadline:
                return target.stats


def _figures(stats: Stats, started: float) -> str:
    slowest = sorted(stats.seconds.items(), key=lambda item: -item[1])[:6]
    reached = ", ".join(f"{event} {count}" for event, count in sorted(stats.events.items()))
    by_state = ", ".join(
        f"{state} {seconds:.2f} s" for state, seconds in sorted(stats.close_max_by_state.items())
    )
    return (
        f"steps: {stats.steps}, sequences: {stats.sequences}, wrong allows: {stats.wrong_allows}, "
        f"unavailable cached checks outside the affected shard: {stats.unavailable_outside}\n"
        f"availability: cached checks in outages {stats.outage_checks}, "
        f"unavailable {stats.unavailable_cached}, "
        f"served past max_stale {stats.served_past_window}; checks outside the affected shard "
        f"{stats.outside_checks}\n"
        f"shutdown: closes {stats.closes}, max close {stats.close_max:.2f} s, over 1 s "
        f"{stats.closes_over_promise}, failed (over the bound or a task left) {stats.closes_over_bound} "
        f"(slowest by state: {by_state})\n"
        f"liveness failures: {stats.liveness}, other failures: {stats.other}; "
        f"{time.monotonic() - started:.0f} s\n"
        f"reached: {reached}\n"
        "slowest steps: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest) + "\n"
        "steps by kind: " + ", ".join(f"{name} {count}" for name, count in stats.calls.most_common())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to explore (default: 10)")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the Cluster profile: 3 primaries with replicas; kill, failover, migrate, flush",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    started = time.monotonic()
    machine: type[Base] = ClusterSequences if args.cluster else Plain
    with tempfile.TemporaryDirectory(prefix="tav-soak-") as scratch:
        world = ClusterWorld(Path(scratch)) if args.cluster else World(Path(scratch))
        try:
            run_machine(
                world,
                profile="cluster" if args.cluster else "soak",
                seconds=args.minutes * 60,
                machine=machine,
            )
        except Exception as failure:
            first = machine.stats.failures[:1]
            if first and first[0] not in str(failure):
                print(f"\nFIRST FAILURE SEEN (before shrinking): {first[0]}", file=sys.stderr)
            for part in failure.exceptions if isinstance(failure, BaseExceptionGroup) else [failure]:
                notes = "\n".join(getattr(part, "__notes__", []))
                print(f"\nFAILED: {part}\n{notes}", file=sys.stderr)
            print(_figures(machine.stats, started))
            return 1
        finally:
            world.close()
    print(_figures(machine.stats, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
