"""A real local Redis Cluster (3 primaries, 3 replicas) and a Sentinel setup (1 master, 1 replica,
3 sentinels), made of `redis-server` processes on free loopback ports.

Used by the cluster and sentinel fixtures of the suite, by `scripts/redis-cluster` and by the
benchmarks. Short timeouts (node timeout 2 s, down-after 1 s) keep failovers to a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from tests.redis_servers import RedisProcess, free_port, redis_server_binary

__all__ = ["Backend", "LocalCluster", "LocalSentinel", "SentinelProcess", "redis_cli"]

CLUSTER_NODE_TIMEOUT_MS = 2000
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 3000
SERVICE = "mymaster"


def redis_cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """Run `redis-cli -p PORT ARGS...` and return its output ('' when the server does not answer)."""
    try:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.decode(errors="replace") if done.returncode == 0 else ""


def _info(port: int, section: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in redis_cli(port, "INFO", section).splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            fields[name] = value
    return fields


def _wait(condition: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {condition}")
        time.sleep(0.05)


class LocalCluster:
    """A Redis Cluster of `primaries` primaries with one replica each, created with
    `redis-cli --cluster create`. The killed-and-restarted node rejoins as a replica."""

    def __init__(
        self,
        primaries: int = 3,
        *,
        node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
        full_coverage: bool = True,
    ) -> None:
        self.nodes = [
            RedisProcess(
                "--cluster-enabled",
                "yes",
                # Redis's default, yes, refuses every slot while any one is not served (between
                # a primary's FAIL flag and its replica's promotion); no serves the others.
                "--cluster-require-full-coverage",
                "yes" if full_coverage else "no",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # Replicas sync at once, not after the default 5 s wait for more replicas.
                "--repl-diskless-sync-delay",
                "0",
                # An explicit bus port: the default (port + 10000) may be taken or out of range.
                "--cluster-port",
                str(free_port()),
            )
            for _ in range(2 * primaries)
        ]
        self.primary_count = primaries

    @property
    def url(self) -> str:
        """`redis+cluster://` with every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        done = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            self.cleanup()
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout!r} {done.stderr!r}")
        self.wait_ok(timeout)

    def live(self) -> list[RedisProcess]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def _view(self, port: int) -> list[list[str]]:
        return [line.split() for line in redis_cli(port, "CLUSTER", "NODES").splitlines() if line.strip()]

    def primaries(self) -> list[RedisProcess]:
        """The live primaries serving slots, as the first live node sees them."""
        for node in self.live():
            view = self._view(node.port)
            if not view:
                continue
            ports = [
                int(fields[1].split("@")[0].rsplit(":", 1)[1])
                for fields in view
                if "master" in fields[2].split(",") and "fail" not in fields[2].split(",") and len(fields) > 8
            ]
            return [self.node(port) for port in sorted(ports)]
        return []

    def replicas(self) -> list[RedisProcess]:
        primaries = {node.port for node in self.primaries()}
        return [node for node in self.live() if node.port not in primaries]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees `primary_count` live primaries with slots."""
        for node in self.live():
            if _info_cluster(node.port).get("cluster_state") != "ok":
                return False
            view = self._view(node.port)
            serving = [f for f in view if "master" in f[2].split(",") and "fail" not in f[2] and len(f) > 8]
            if len(serving) != self.primary_count:
                return False
        return True

    def wait_ok(self, timeout: float = 30.0) -> None:
        _wait("cluster_state:ok on every node", self.healthy, timeout)

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Until every replica has applied everything its primary wrote."""

        def caught_up() -> bool:
            for node in self.primaries():
                info = _info(node.port, "replication")
                offset = info.get("master_repl_offset")
                replicas = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
                if not replicas or any(f"offset={offset}," not in r for r in replicas):
                    return False
            return True

        _wait("replicas to catch up", caught_up, timeout)

    def replica_of(self, primary: RedisProcess, timeout: float = 10.0) -> RedisProcess:
        """The live replica of `primary`, as `primary` sees it. Waits for it: right after `start`
        or a failover, the primary may have the replica's replication link before the cluster
        bus has told it the replica's role."""
        found: list[RedisProcess] = []

        def known() -> bool:
            ident = self.node_id(primary)
            for fields in self._view(primary.port):
                if len(fields) > 3 and fields[3] == ident and "slave" in fields[2].split(","):
                    node = self.node(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
                    if node in self.live():
                        found.append(node)
                        return True
            return False

        _wait(f"a replica of {primary.port} in its cluster view", known, timeout)
        return found[0]

    def kill_primary(self, index: int = 0) -> RedisProcess:
        """SIGKILL one primary (by index among `primaries()`); returns it."""
        victim = self.primaries()[index]
        victim.kill()
        return victim

    def wait_failover(self, killed: RedisProcess, timeout: float = 30.0) -> None:
        """Until a replica of the killed primary was promoted and the cluster is ok again."""

        def promoted() -> bool:
            return self.healthy() and killed not in self.primaries()

        _wait("a replica to be promoted", promoted, timeout)

    def flushall(self) -> None:
        for node in self.primaries():
            redis_cli(node.port, "FLUSHALL")

    def reshard(self, source: RedisProcess, target: RedisProcess, slots: int, timeout: float = 60.0) -> None:
        """Move `slots` slots, with their keys, from one primary to another (redis-cli --cluster reshard)."""
        ids = [redis_cli(node.port, "CLUSTER", "MYID").strip() for node in (source, target)]
        done = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{source.port}",
                "--cluster-from",
                ids[0],
                "--cluster-to",
                ids[1],
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster reshard failed: {done.stdout!r} {done.stderr!r}")
        self.wait_ok(timeout)

    # ---------------------------------------------------------------------- slot migrations

    def add_primary(self, timeout: float = 30.0) -> RedisProcess:
        """Start one more node and join it as a primary serving no slot yet (`redis-cli --cluster
        add-node`), as one grows a cluster before resharding onto it. No CLUSTER SLOTS reply names
        it until it serves a slot; `cleanup` stops it with the others."""
        args = list(self.nodes[0].extra_args)
        args[args.index("--cluster-port") + 1] = str(free_port())  # its own bus port
        node = RedisProcess(*args)
        node.start()
        self.nodes.append(node)
        seed = self.primaries()[0]
        done = subprocess.run(
            ["redis-cli", "--cluster", "add-node", f"127.0.0.1:{node.port}", f"127.0.0.1:{seed.port}"],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster add-node failed: {done.stdout!r} {done.stderr!r}")

        def known() -> bool:
            wanted = str(len(self.live()))
            views = [_info_cluster(n.port) for n in self.live()]
            return all(
                (view.get("cluster_known_nodes"), view.get("cluster_state")) == (wanted, "ok")
                for view in views
            )

        _wait("every node to know the new one, and it the slots", known, timeout)
        return node

    def node_id(self, node: RedisProcess) -> str:
        return redis_cli(node.port, "CLUSTER", "MYID").strip()

    def owner(self, slot: int) -> RedisProcess:
        """The primary serving `slot`, as the first live primary sees it."""
        view = self._view(self.primaries()[0].port)
        for fields in view:
            for span in fields[8:]:
                if span.startswith("["):
                    continue  # "[slot->-id]": a migration, not a range served
                start, _, end = span.partition("-")
                if int(start) <= slot <= int(end or start):
                    return self.node(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        raise LookupError(f"no primary serves slot {slot}")

    def open_migration(self, slot: int, source: RedisProcess, target: RedisProcess) -> None:
        """Put `slot` in the state of a resharding that has not moved its keys yet (or stopped
        half-way): IMPORTING on `target`, MIGRATING on `source` (the order redis-cli uses).
        `migrate_keys` moves some keys, `close_migration` undoes it all."""
        _command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        _command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def migrate_keys(self, source: RedisProcess, target: RedisProcess, keys: list[str]) -> None:
        """Move `keys` (those that exist) from `source` to `target` as a resharding does (MIGRATE)."""
        if keys:
            _command(source.port, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)

    def slot_keys(self, node: RedisProcess, slot: int) -> list[str]:
        """The keys of `slot` that `node` holds."""
        return [str(key) for key in _command(node.port, "CLUSTER", "GETKEYSINSLOT", slot, 100_000)]

    def close_migration(self, slot: int, source: RedisProcess, target: RedisProcess) -> None:
        """Undo `open_migration`: the slot is STABLE on `source` again, the keys `target` holds
        (moved there, or written there during the migration) go back to it, and the slot is STABLE
        on `target` too. (A migrating source would answer ASK to their RESTORE.)"""
        _command(source.port, "CLUSTER", "SETSLOT", slot, "STABLE")
        self.migrate_keys(target, source, self.slot_keys(target, slot))
        _command(target.port, "CLUSTER", "SETSLOT", slot, "STABLE")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _command(port: int, *args: str | int) -> Any:
    """One command to one node, its error reply raised (redis-cli would print it and exit 0)."""
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=10)
    try:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _info_cluster(port: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in redis_cli(port, "CLUSTER", "INFO").splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            fields[name] = value
    return fields


class SentinelProcess(RedisProcess):
    """One `redis-server --sentinel` watching `master_port` as `SERVICE` (quorum 2)."""

    def __init__(self, master_port: int, *, down_after_ms: int = SENTINEL_DOWN_AFTER_MS) -> None:
        super().__init__()
        self.master_port = master_port
        self.down_after_ms = down_after_ms

    def start(self, timeout: float = 10.0) -> None:
        config = self.dir / "sentinel.conf"
        if not config.exists():  # a restart keeps what this sentinel learnt
            config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                "protected-mode no\n"
                f"dir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
        args = [redis_server_binary(), str(config), "--sentinel"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"sentinel on port {self.port}", self.answers, timeout)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


class LocalSentinel:
    """A master, one replica and three sentinels monitoring them as `SERVICE`."""

    def __init__(self, *, down_after_ms: int = SENTINEL_DOWN_AFTER_MS) -> None:
        self.master = RedisProcess("--repl-diskless-sync-delay", "0")
        self.replica = RedisProcess(
            "--replicaof", "127.0.0.1", str(self.master.port), "--repl-diskless-sync-delay", "0"
        )
        self.sentinels = [SentinelProcess(self.master.port, down_after_ms=down_after_ms) for _ in range(3)]
        self.service = SERVICE

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    @property
    def servers(self) -> list[RedisProcess]:
        return [self.master, self.replica]

    def start(self, timeout: float = 60.0) -> None:
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_ready(timeout)

    def master_port(self) -> int | None:
        """The master's port as the first answering sentinel names it."""
        for sentinel in self.sentinels:
            reply = redis_cli(sentinel.port, "SENTINEL", "get-master-addr-by-name", self.service).split()
            if len(reply) == 2:
                return int(reply[1])
        return None

    def current_master(self) -> RedisProcess:
        port = self.master_port()
        return next(server for server in self.servers if server.port == port)

    def _sentinel_view(self, port: int) -> dict[str, str]:
        lines = redis_cli(port, "SENTINEL", "MASTER", self.service).splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=False))

    def ready(self) -> bool:
        """Master and replica linked, every sentinel sees the replica and the two other sentinels."""
        master = self.master_port()
        if master is None:
            return False
        replica = next(s for s in self.servers if s.port != master)
        if replica.process is None or replica.process.poll() is not None:
            return False
        if _info(replica.port, "replication").get("master_link_status") != "up":
            return False
        for sentinel in self.sentinels:
            view = self._sentinel_view(sentinel.port)
            if view.get("port") != str(master) or view.get("flags") != "master":
                return False
            if view.get("num-slaves") != "1" or view.get("num-other-sentinels") != "2":
                return False
            replicas = redis_cli(sentinel.port, "SENTINEL", "REPLICAS", self.service)
            if "s_down" in replicas or "disconnected" in replicas:
                return False
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        _wait("the sentinels to see master, replica and each other", self.ready, timeout)

    def wait_replicated(self, timeout: float = 10.0) -> None:
        def caught_up() -> bool:
            info = _info(self.current_master().port, "replication")
            offset = info.get("master_repl_offset")
            return info.get("connected_slaves") == "1" and f"offset={offset}," in info.get("slave0", "")

        _wait("the replica to catch up", caught_up, timeout)

    def wait_failover(self, old_master_port: int, timeout: float = 30.0) -> None:
        """Until the sentinels name a new master that says it is one."""

        def switched() -> bool:
            port = self.master_port()
            return (
                port is not None
                and port != old_master_port
                and _info(port, "replication").get("role") == "master"
            )

        _wait("the sentinels to promote the replica", switched, timeout)

    def flushall(self) -> None:
        redis_cli(self.current_master().port, "FLUSHALL")

    def cleanup(self) -> None:
        for process in (*self.sentinels, self.replica, self.master):
            process.cleanup()


@dataclass
class Backend:
    """One kind of store deployment for parametrised tests: its URL and the Redis nodes that
    take writes now (the server; the Sentinel master; every Cluster primary)."""

    kind: str  # "standalone", "cluster" or "sentinel"
    url: str
    write_ports: Callable[[], list[int]]

    def flushall(self) -> None:
        for port in self.write_ports():
            redis_cli(port, "FLUSHALL")

    def write_nodes(self) -> list[aioredis.Redis]:
        """A plain client per write node (the caller closes them)."""
        return [
            aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True) for port in self.write_ports()
        ]


# -------------------------------------------------------------------------- scripts/redis-cluster


def _state_file() -> Path:
    return Path(tempfile.gettempdir()) / f"tav-redis-cluster-{os.getuid()}.json"


def _processes(setup: LocalCluster | LocalSentinel) -> list[RedisProcess]:
    return list(setup.nodes) if isinstance(setup, LocalCluster) else [*setup.sentinels, *setup.servers]


def _stop_recorded(state: dict[str, Any]) -> None:
    """Stop what a detached `start` left running (its own processes only, by pid)."""
    for pid in state["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in state["pids"]:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    for path in state["dirs"]:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`scripts/redis-cluster [start] [--sentinel] [--detach] | stop | url`."""
    parser = argparse.ArgumentParser(
        prog="scripts/redis-cluster",
        description="A local Redis Cluster (3 primaries, 3 replicas) or Sentinel setup (1 master, 1 replica, "
        "3 sentinels) on free loopback ports, for trying things and for benchmarks (--store URL).",
    )
    parser.add_argument("command", nargs="?", choices=["start", "stop", "url"], default="start")
    parser.add_argument("--sentinel", action="store_true", help="start a Sentinel setup instead")
    parser.add_argument("--detach", action="store_true", help="leave it running and return")
    args = parser.parse_args(argv)
    state_file = _state_file()
    recorded: dict[str, Any] | None = json.loads(state_file.read_text()) if state_file.exists() else None
    if args.command == "url":
        if recorded is None:
            print("nothing running (scripts/redis-cluster start)", file=sys.stderr)
            return 1
        print(recorded["url"])
        return 0
    if args.command == "stop":
        if recorded is None:
            print("nothing running", file=sys.stderr)
            return 1
        _stop_recorded(recorded)
        state_file.unlink(missing_ok=True)
        print(f"stopped {recorded['url']}")
        return 0
    if recorded is not None:
        print(f"already running: {recorded['url']} (scripts/redis-cluster stop)", file=sys.stderr)
        return 1
    setup: LocalCluster | LocalSentinel = LocalSentinel() if args.sentinel else LocalCluster()
    try:
        setup.start()
    except BaseException:
        setup.cleanup()
        raise
    processes = _processes(setup)
    state = {
        "url": setup.url,
        "pids": [p.process.pid for p in processes if p.process is not None],
        "dirs": [str(p.dir) for p in processes],
    }
    state_file.write_text(json.dumps(state))
    print(setup.url, flush=True)
    if args.detach:
        return 0
    print("running; Ctrl-C (or scripts/redis-cluster stop) stops it", file=sys.stderr, flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.is_set() and all(
            p.process is not None and p.process.poll() is None for p in processes
        ):
            stopping.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        setup.cleanup()
        state_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
