"""Throwaway `redis-server` processes on free loopback ports, for the integration and fault tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.processes import stop_process

__all__ = ["RedisProcess", "free_port", "redis_server_binary"]


def redis_server_binary() -> str:
    """The server binary: $REDIS_SERVER, else `redis-server` (or `valkey-server`) on PATH."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no redis-server found: the integration tests need a real Redis server binary on PATH "
        "(scripts/test installs one), or its path in $REDIS_SERVER"
    )


# Ports already handed out by this process: the OS may offer a port again as soon as its probe
# socket is closed, and a Cluster node given the same port for clients and for its bus exits.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, never one this process was given before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class RedisProcess:
    """One redis-server the test controls: start, SIGKILL, SIGSTOP/SIGCONT, restart on the same port."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="tav-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {args}")
            if self.answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                # A server with a password answers -NOAUTH: up all the same.
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def save(self) -> None:
        """Write an RDB snapshot so that a restart comes back with the same data."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "SAVE"], check=True, capture_output=True, timeout=10
        )

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may be stopped by SIGSTOP)."""
        return self.process is not None and self.process.poll() is None

    def discard_data(self) -> None:
        """Remove what an earlier `save()` wrote, so that the next `start()` comes back empty."""
        for name in ("dump.rdb", "appendonlydir", "appendonly.aof"):
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        stop_process(self.process)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
