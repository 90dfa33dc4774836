"""Store URLs for Redis Cluster and Sentinel, and the cluster's slot arithmetic (no server needed:
clients connect lazily)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.crc import key_slot

from validator import ConfigurationError, Store
from validator.store.cluster import (
    MARKER_STRIDE,
    SLOTS,
    ClusterTopology,
    ClusterWires,
    parse_slots,
    probe_slot,
    slot_tags,
)
from validator.store.invalidation import SingleServer
from validator.store.sentinel import SentinelTopology, SentinelWire
from validator.store.urls import parse_multihost
from validator.store.wire import SingleWire, WireError

OPTIONS = {"db", "sentinel_password", "max_connections"}


VALID = {
    "one host": ("redis+cluster://127.0.0.1:7000", {"hosts": [("127.0.0.1", 7000)]}),
    "several hosts, default port": (
        "redis+cluster://a:7000,b:7001,c",
        {"hosts": [("a", 7000), ("b", 7001), ("c", 6379)]},
    ),
    "password only": ("redis+cluster://:s3cret@h:7000", {"password": "s3cret", "username": None}),
    "user, percent-encoded password": (
        "redis+cluster://app:p%40ss%3Aw@h:7000",
        {"username": "app", "password": "p@ss:w"},
    ),
    "sentinel service and db": (
        "redis+sentinel://s1:26380,s2/mymaster?db=2",
        {"hosts": [("s1", 26380), ("s2", 6379)], "path": "/mymaster", "options": {"db": 2}},
    ),
    "IPv6 hosts": (
        "redis+sentinel://[::1]:26379,[2001:db8::7]/svc",
        {"hosts": [("::1", 26379), ("2001:db8::7", 6379)], "path": "/svc"},
    ),
    "TLS options": (
        "rediss+cluster://h:7000?ssl_cert_reqs=none&ssl_check_hostname=false",
        {"tls": True, "options": {"ssl_cert_reqs": "none", "ssl_check_hostname": False}},
    ),
    "no TLS": ("redis+cluster://h:7000", {"tls": False, "options": {}, "path": ""}),
    "empty option": ("redis+sentinel://h/svc?sentinel_password=", {"options": {"sentinel_password": ""}}),
}


@pytest.mark.parametrize(("url", "expected"), VALID.values(), ids=VALID.keys())
def test_multihost_urls(url: str, expected: dict[str, Any]) -> None:
    parsed = parse_multihost(url, default_port=6379, options=OPTIONS)
    assert {name: getattr(parsed, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis+cluster://", "at least one host", id="no host"),
        pytest.param("redis+cluster://h:7000,", "empty host", id="trailing comma"),
        pytest.param("redis+cluster://h:port", "bad port", id="port not a number"),
        pytest.param("redis+cluster://h:70000", "out of range", id="port out of range"),
        pytest.param("redis+cluster://h:7000?bogus=1", "unknown option 'bogus'", id="unknown option"),
        pytest.param(
            "redis+cluster://h:7000?ssl_cert_reqs=none", "unknown option", id="TLS option without TLS"
        ),
        pytest.param("redis+cluster://h?max_connections=many", "not an integer", id="integer option"),
        pytest.param("rediss+cluster://h?ssl_check_hostname=maybe", "not a boolean", id="boolean option"),
        pytest.param("redis+cluster://h:7000/3", "database 0 only", id="cluster database"),
        pytest.param("redis+sentinel://h:26379", "name the monitored service", id="no service"),
        pytest.param("redis+sentinel://h:26379/a/b", "name the monitored service", id="two path segments"),
        pytest.param("redis+sentinel://h/svc?db=x", "not an integer", id="db not a number"),
        pytest.param("redis+sentinel://h/svc?max_connections=5", "unknown option", id="cluster option"),
        pytest.param("redis+cluster+sentinel://h/svc", "unsupported store URL", id="unknown scheme"),
    ],
)
def test_malformed_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Store.from_url(url, secret="s")


def test_cluster_url_builds_a_cluster_store() -> None:
    store = Store.from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001?max_connections=7", secret="s")
    assert isinstance(store.client, RedisCluster)
    assert isinstance(store.topology, ClusterTopology)
    assert isinstance(store._wires, ClusterWires)  # one multiplexed connection per primary
    assert {(n.host, n.port) for n in store.client.startup_nodes} == {
        ("127.0.0.1", 7000),
        ("127.0.0.1", 7001),
    }
    assert store.client.connection_kwargs["max_connections"] == 7
    assert store.client.connection_kwargs["decode_responses"] is True
    assert store.client.connection_kwargs["socket_timeout"] == 0.5


def test_tls_cluster_url_passes_tls_options() -> None:
    store = Store.from_url("rediss+cluster://:pw@h:7000?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem", secret="s")
    assert isinstance(store.client, RedisCluster)
    kwargs = store.client.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"], kwargs["password"]) == ("none", "/ca.pem", "pw")
    assert kwargs["connection_class"].__name__ == "SSLConnection"
    assert store._wires is None  # the multiplexer knows no certificate options


@pytest.mark.parametrize(
    ("url", "connection", "sentinel_password"),
    [
        pytest.param("redis+sentinel://:pw@h:26379/svc?db=3", "_MasterConnection", "pw", id="plain"),
        pytest.param("rediss+sentinel://:pw@h:26379/svc?sentinel_password=", "_MasterSSLConnection", None,
                     id="TLS, sentinels without a password"),
    ],
)  # fmt: skip
def test_sentinel_url_builds_a_master_store(url: str, connection: str, sentinel_password: str | None) -> None:
    store = Store.from_url(url, secret="s")
    assert isinstance(store.topology, SentinelTopology)
    # Reads on the master's own multiplexed connection, except over TLS (no certificate options).
    assert isinstance(store._wires, SentinelWire) is (connection == "_MasterConnection")
    assert not isinstance(store.client, RedisCluster)
    pool = store.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "svc"
    assert pool.connection_class.__name__ == connection
    assert pool.connection_kwargs["password"] == "pw"
    (sentinel,) = pool.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_kwargs["password"] == sentinel_password
    assert sentinel.connection_pool.connection_kwargs["port"] == 26379


def test_standalone_url_keeps_one_server_and_the_multiplexer() -> None:
    store = Store.from_url("redis://127.0.0.1:6379/0", secret="s")
    assert isinstance(store.topology, SingleServer)
    assert isinstance(store._wires, SingleWire)


def test_every_slot_has_a_tag_that_maps_to_it() -> None:
    tags = slot_tags()
    assert len(tags) == SLOTS
    for slot, tag in enumerate(tags):
        assert key_slot(f"tav:marker{{{tag}}}".encode()) == slot


@pytest.mark.parametrize(
    ("ranges", "slot"),
    [
        pytest.param(((0, 5460),), 0, id="first slot is a marker slot"),
        pytest.param(((5461, 10922),), 5472, id="next multiple of the stride"),
        pytest.param(((5461, 5470), (6000, 6001)), 6000, id="in a later range"),
        pytest.param(((5461, 5470),), 5461, id="no marker slot: the first slot"),
    ],
)
def test_probe_slot(ranges: tuple[tuple[int, int], ...], slot: int) -> None:
    assert probe_slot(ranges) == slot
    assert slot % MARKER_STRIDE == 0 or not any(
        -(-start // MARKER_STRIDE) * MARKER_STRIDE <= end for start, end in ranges
    )


def test_cluster_slots_reply_becomes_a_layout() -> None:
    reply = [
        [10923, 16383, ["127.0.0.1", 7002, "id3", []], ["127.0.0.1", 7005, "id6", []]],
        [0, 5460, ["", 7000, "id1", []]],  # an empty host: the node asked
        [5461, 10922, ["127.0.0.1", 7001, "id2", []]],
        [16000, 16000, ["127.0.0.1", 7000, "id1", []]],
    ]
    assert parse_slots(reply, "10.0.0.1") == {
        "10.0.0.1:7000": ((0, 5460),),
        "127.0.0.1:7000": ((16000, 16000),),
        "127.0.0.1:7001": ((5461, 10922),),
        "127.0.0.1:7002": ((10923, 16383),),
    }


def _wires(url: str = "redis+cluster://:p%40ss@127.0.0.1:7000") -> tuple[ClusterTopology, ClusterWires]:
    store = Store.from_url(url, secret="s")
    assert isinstance(store.topology, ClusterTopology)
    assert isinstance(store._wires, ClusterWires)
    return store.topology, store._wires


def test_cluster_reads_wait_for_a_layout_then_follow_it() -> None:
    topology, wires = _wires()
    assert wires.for_tag("abc") is None  # no layout yet: redis-py
    topology.layout = {"127.0.0.1:7000": ((0, 8191),), "127.0.0.1:7001": ((8192, 16383),)}
    low = next(tag for tag in map(str, range(1000)) if key_slot(tag.encode()) < 8192)
    high = next(tag for tag in map(str, range(1000)) if key_slot(tag.encode()) >= 8192)
    first, second = wires.for_tag(low), wires.for_tag(high)
    assert first is not None and second is not None and first is not second
    assert (first._host, first._port, first._password) == ("127.0.0.1", 7000, "p@ss")
    assert (second._host, second._port) == ("127.0.0.1", 7001)
    # A new layout: the node that left loses its connection, the slots go to the new owner.
    topology.layout = {"127.0.0.1:7001": ((0, 16383),)}
    assert wires.for_tag(low) is second
    assert first._protocol is None and ("127.0.0.1", 7000) not in wires._nodes


def test_a_moved_reply_reroutes_its_slot_and_redirections_go_to_redis_py() -> None:
    topology, wires = _wires("redis+cluster://127.0.0.1:7000")
    topology.layout = {"127.0.0.1:7000": ((0, 16383),)}
    assert wires.for_tag("abc") is not None
    slot = key_slot(b"abc")
    assert wires.redirected("abc", WireError(f"MOVED {slot} [::1]:7005", "reply"))
    moved = wires.for_tag("abc")
    assert moved is not None and (moved._host, moved._port) == ("::1", 7005)
    # The listener's next poll finds the same layout: what MOVED taught stays.
    topology.layout = {"127.0.0.1:7000": ((0, 16383),)}
    assert wires.for_tag("abc") is moved
    redirected = [("ASK 1 h:1", "reply"), ("TRYAGAIN k", "reply"), ("CLUSTERDOWN d", "reply"),
                  ("cannot connect: refused", "connection"), ("connection lost", "connection"),
                  ("the node left the cluster layout", "left")]  # fmt: skip
    for text, kind in redirected:
        assert wires.redirected("abc", WireError(text, kind)), text
    not_redirected = [("no reply within 0.5s", "timeout"), ("cannot connect: no connection", "timeout"),
                      ("ERR unknown", "reply"), ("closed", "closed")]  # fmt: skip
    for text, kind in not_redirected:
        assert not wires.redirected("abc", WireError(text, kind)), text
    # Malformed or unusable MOVED replies teach nothing, and raise nothing.
    for text in ("MOVED 12", "MOVED -1 h:1", "MOVED 99999 h:1", f"MOVED {slot} :7001", f"MOVED {slot} ?:7001",
                 f"MOVED {slot} h:99999", "MOVED x h:1"):  # fmt: skip
        assert wires.redirected("abc", WireError(text, "reply")), text
        assert wires.for_tag("abc") is moved
    # IPv6 with or without brackets names one node.
    assert wires.redirected("abc", WireError(f"MOVED {slot} ::1:7005", "reply"))
    assert wires.for_tag("abc") is moved
    wires.close()
    assert wires.for_tag("abc") is None
    topology.layout = {"127.0.0.1:7000": ((0, 16383),)}  # a late poll opens nothing after close
    assert wires.for_tag("abc") is None and not wires._nodes


def test_sentinel_reads_follow_the_master_the_sentinels_name() -> None:
    store = Store.from_url("redis+sentinel://u:p%2Fw@127.0.0.1:26379/svc?db=2", secret="s")
    topology, wire = store.topology, store._wires
    assert isinstance(topology, SentinelTopology) and isinstance(wire, SentinelWire)
    assert wire.for_tag("abc") is None  # no master known yet: redis-py asks the sentinels
    topology.master_address = ("10.0.0.1", 6379)
    first = wire.for_tag("abc")
    assert first is not None and wire.for_tag("xyz") is first
    assert (first._host, first._port, first._db, first._username, first._password) == (
        "10.0.0.1",
        6379,
        2,
        "u",
        "p/w",
    )
    topology.master_address = ("::1", 6380)  # a failover
    second = wire.for_tag("abc")
    assert second is not None and second is not first and (second._host, second._port) == ("::1", 6380)
    for text, kind in [("cannot connect", "connection"), ("left", "left"), ("READONLY no", "reply")]:
        assert wire.redirected("abc", WireError(text, kind)), text
    for text, kind in [("no reply", "timeout"), ("ERR unknown", "reply"), ("closed", "closed")]:
        assert not wire.redirected("abc", WireError(text, kind)), text
    wire.close()
    assert wire.for_tag("abc") is None
