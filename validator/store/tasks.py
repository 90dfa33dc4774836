"""What every background loop (the invalidation listener's, the denial log writer's) shares: it
ends when its task was asked to stop, even if the request was swallowed on the way."""

from __future__ import annotations

import asyncio

__all__ = ["end_if_cancelled"]


def end_if_cancelled() -> None:
    """Raise CancelledError if the running task was asked to stop (`Task.cancelling()`).

    A cancellation can be swallowed before it reaches the loop: by a client library (redis-py
    issue 2551), or by `asyncio.wait_for` on Python 3.11 when what it waited for finished at the
    same moment. A loop that then went on would run for ever, and `asyncio.run()` (which cancels
    each task once, then waits for all of them) would never return. Called at the top of each
    iteration, it ends the loop at its next turn."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
