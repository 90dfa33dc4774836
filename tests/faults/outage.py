"""Deployments of the outage and shutdown tests' own (one server, a Sentinel setup, a Cluster),
one node of which a test kills (SIGKILL) or freezes (SIGSTOP), measures, and restores.

A deployment is shared by the tests of a module: `restore()` brings the broken node back before
the next test (no failover comes: the Cluster's node timeout and the sentinels' down-after are
30 s here), and `reset()` empties it and writes the marker and the test's tokens again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.redis_cluster import LocalCluster, LocalSentinel
from tests.redis_servers import RedisProcess
from validator import Admin, Store
from validator.store.layout import slot_of

__all__ = ["KINDS", "SECRET", "Deployment"]

SECRET = "outage-secret"
KINDS = ("single", "cluster", "sentinel")
NO_FAILOVER_MS = 30_000


@dataclass
class Deployment:
    kind: str
    setup: RedisProcess | LocalCluster | LocalSentinel
    broken: list[tuple[RedisProcess, str]] = field(default_factory=list)

    @classmethod
    def start(cls, kind: str) -> Deployment:
        setup: RedisProcess | LocalCluster | LocalSentinel
        # No failover while a test has a node down (a loaded machine may take a second or two to
        # bring it back): the tests here are about one node down, not about failovers.
        if kind == "cluster":
            setup = LocalCluster(node_timeout_ms=NO_FAILOVER_MS)
        elif kind == "sentinel":
            setup = LocalSentinel(down_after_ms=NO_FAILOVER_MS)
        else:
            setup = RedisProcess()
        setup.start()
        return cls(kind, setup)

    @property
    def url(self) -> str:
        return self.setup.url

    def node_of(self, token: str) -> RedisProcess:
        """The redis-server that holds `token`'s keys (the server, the master, the slot's primary)."""
        if isinstance(self.setup, RedisProcess):
            return self.setup
        if isinstance(self.setup, LocalSentinel):
            return self.setup.current_master()
        token_hash = Store.from_url("memory://", secret=SECRET).token_hash(token)
        return self.setup.owner(slot_of(token_hash))

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL `node` (returns once it is gone); `restore()` starts it again."""
        self.broken.append((node, "killed"))
        node.kill()

    def stop(self, node: RedisProcess) -> None:
        """SIGSTOP `node`: connections to it hang, its replies never come; `restore()` resumes it."""
        self.broken.append((node, "stopped"))
        node.signal(signal.SIGSTOP)

    def restore(self) -> None:
        """Bring every broken node back, and wait until the deployment serves again."""
        broken, self.broken = self.broken, []
        for node, how in broken:
            if how == "stopped":
                node.signal(signal.SIGCONT)
            elif not node.running:
                node.start()  # empty (no persistence); a Cluster node rejoins from nodes.conf
        if isinstance(self.setup, LocalCluster):
            self.setup.wait_ok()
        elif isinstance(self.setup, LocalSentinel):
            self.setup.wait_ready()
        else:
            deadline = time.monotonic() + 10
            while not self.setup.answers():
                assert time.monotonic() < deadline, "the server did not come back"
                time.sleep(0.02)

    async def reset(self, tokens: Mapping[str, list[str]]) -> None:
        """Empty the store, mark it, and store each token restricted to its IP list."""
        if isinstance(self.setup, RedisProcess):
            from tests.redis_cluster import redis_cli

            redis_cli(self.setup.port, "FLUSHALL")
        else:
            self.setup.flushall()
        admin = Admin.from_url(self.url, secret=SECRET)
        try:
            await admin.init()
            for token, ips in tokens.items():
                await admin.set_ips(token, ips)
                await admin.enable(token, "ip")
        finally:
            await admin.close()

    def cleanup(self) -> None:
        self.restore_quietly()
        self.setup.cleanup()

    def restore_quietly(self) -> None:
        for node, how in self.broken:
            if how == "stopped":
                node.signal(signal.SIGCONT)
        self.broken = []
