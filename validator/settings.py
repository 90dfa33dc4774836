"""Validator settings, their defaults and checks, and the counters a validator exposes."""

from __future__ import annotations

from typing import Literal, TypedDict

import msgspec

from validator.errors import ConfigurationError
from validator.model import DEFAULT_MAX_TOKEN_LENGTH, MAX_TOKEN_LENGTH, Decision
from validator.store.options import StoreOptions

__all__ = ["DEFAULTS", "READ_LATENCY_BUCKETS", "Settings", "Stats", "ValidatorOptions", "checked"]


class Stats(msgspec.Struct, frozen=True):
    """A validator's counters at one moment (`Validator.stats`), read-only."""

    decisions: dict[Decision, int]
    """How many times each decision was made."""
    misses: int
    """Checks not answered by the local cache."""
    failed_closed: int
    """Checks refused because the store was unavailable."""
    store_errors: int
    """Failed store reads."""
    read_latency_sum: float
    """Seconds spent in store reads, in total."""
    read_latency_counts: tuple[int, ...]
    """Store reads per latency bucket (`READ_LATENCY_BUCKETS`, then one for slower reads)."""


class Settings(TypedDict, total=False):
    """Validator settings (all optional; defaults in `DEFAULTS`)."""

    unknown_token: Literal["allow", "deny"]
    max_token_length: int
    fail_open: bool
    cache_size: int
    unknown_cache_size: int
    ttl: float
    unknown_ttl: float
    max_stale: float
    max_concurrent_loads: int
    invalidation: bool
    incoherent_ttl: float
    ping_interval: float
    ping_timeout: float
    topology_interval: float
    require_marker: bool
    marker_interval: float
    breaker_threshold: int
    breaker_reset: float
    denial_log: bool
    denial_queue_size: int
    denial_stream_length: int
    denial_unknown_length: int
    denial_ttl: float
    denial_log_rate: float


class ValidatorOptions(StoreOptions, Settings, total=False):
    """`Validator.from_url`'s keywords: the store's options (`StoreOptions`) and the `Settings`."""


DEFAULTS: Settings = {
    "unknown_token": "allow",
    # Longer tokens, or any with a character outside `!`..`~`, are denied without a read.
    "max_token_length": DEFAULT_MAX_TOKEN_LENGTH,
    "fail_open": False,
    "cache_size": 100_000,
    "unknown_cache_size": 10_000,
    # With invalidation on, `ttl` is only the safety net: changes arrive in milliseconds.
    "ttl": 300.0,
    "unknown_ttl": 60.0,
    "max_stale": 300.0,
    "max_concurrent_loads": 64,
    "invalidation": True,
    # While a store node's invalidations may be missed (its subscription down or not yet
    # confirmed, e.g. just after a failover), entries of its tokens are read again on every check.
    "incoherent_ttl": 0.0,
    "ping_interval": 1.0,
    "ping_timeout": 1.0,
    # How often a Sentinel or Cluster topology is compared with the one subscribed to.
    "topology_interval": 2.0,
    "require_marker": True,
    # How often the marker is re-read when no invalidation connection reports its deletion.
    "marker_interval": 5.0,
    "breaker_threshold": 3,
    "breaker_reset": 1.0,
    # Each denial of a stored token is kept in a capped per-token stream (validator-admin
    # denials), written in the background; when the queue is full, denials are dropped and
    # counted. Denials of tokens without a record share one capped log (denials --unknown), so
    # a flood of invented tokens costs a bounded amount of Redis memory. Streams expire
    # `denial_ttl` seconds after their last write.
    "denial_log": True,
    "denial_queue_size": 10_000,
    "denial_stream_length": 1000,
    "denial_unknown_length": 1000,
    "denial_ttl": 7 * 24 * 3600.0,
    # Denials logged per second at most (the rest counted, and summarised in the next line).
    "denial_log_rate": 10.0,
}

# Upper bounds (seconds) of the store read latency histogram; the last bucket is +Inf.
READ_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def checked(settings: Settings) -> Settings:
    """`settings` over `DEFAULTS`; raises `ConfigurationError` for an unknown or bad one."""
    unknown = set(settings) - set(Settings.__annotations__)
    if unknown:
        raise ConfigurationError(f"unknown validator settings: {', '.join(sorted(unknown))}")
    s: Settings = {**DEFAULTS, **settings}
    if s["unknown_token"] not in ("allow", "deny"):
        raise ConfigurationError(f"unknown_token must be 'allow' or 'deny', not {s['unknown_token']!r}")
    if s["max_concurrent_loads"] < 1 or s["marker_interval"] <= 0:
        raise ConfigurationError("max_concurrent_loads and marker_interval must be positive")
    if s["incoherent_ttl"] < 0:
        raise ConfigurationError("incoherent_ttl must not be negative")
    if not 1 <= s["max_token_length"] <= MAX_TOKEN_LENGTH:
        raise ConfigurationError(f"max_token_length must be between 1 and {MAX_TOKEN_LENGTH}")
    return s
