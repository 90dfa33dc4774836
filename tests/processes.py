"""The servers a test (or a benchmark) runs as child processes: waited for with a deadline,
stopped for sure.

    wait_answering(url, process, "the gate", output, timeout=20.0)  # polls; raises with the log
    stop_process(process)  # SIGTERM, then SIGKILL
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping

import httpx

__all__ = ["stop_process", "wait_answering"]


def wait_answering(
    url: str,
    process: subprocess.Popen[bytes] | None,
    what: str,
    output: Callable[[], str],
    *,
    timeout: float,
    status: int | None = 200,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Poll `url` until it answers `status` (any status when None), for `timeout` seconds at most.
    Raises RuntimeError naming `what`, with `output()` (its log), if `process` exits first or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{output()}")
        try:
            answer = httpx.get(url, headers=headers, timeout=1.0)
        except httpx.TransportError:
            pass
        else:
            if status is None or answer.status_code == status:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout}s:\n{output()}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate `process` if it still runs, kill it if it has not exited within 10 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
