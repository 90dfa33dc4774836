"""The stateful model test (issue 12): random sequences of admin operations, store events, time
and requests against real redis-server processes, every decision held to the reference model.

The normal run uses the small profile of `tests.model.run` (25 sequences of at most 40 steps,
and no new step after 100 s); `scripts/soak --minutes N` runs the same machine for as long as
asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.model.harness import World
from tests.model.run import run_machine


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sequences_keep_the_promises(world: World) -> None:
    stats = run_machine(world, profile="ci")
    assert stats.sequences > 0 and stats.steps > 0
