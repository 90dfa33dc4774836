"""Prometheus metrics of a Validator (needs the `metrics` extra: prometheus-client).

    from validator.metrics import install
    install(validator)              # into prometheus_client's default registry

The validator counts with plain integers on the hot path; this collector turns them into
metrics when Prometheus scrapes, so measuring costs the request path nothing more. Labels are
bounded sets (outcome, reason, source, state): never a token, nor a fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as missing:  # pragma: no cover - depends on the install
    raise ImportError(
        "validator.metrics needs the `metrics` extra: pip install 'token-access-validator[metrics]'"
    ) from missing

from validator.breaker import BreakerState
from validator.core import READ_LATENCY_BUCKETS, Validator

__all__ = ["ValidatorCollector", "install"]


def _outcome(allowed: bool, reported: bool) -> str:
    if reported:
        return "reported"  # would be denied: report-only let it through
    return "allowed" if allowed else "denied"


class ValidatorCollector(Collector):
    """Reads a validator's counters at scrape time."""

    def __init__(self, validator: Validator, *, namespace: str = "token_access") -> None:
        self.validator = validator
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        v, ns = self.validator, self.namespace
        stats = v.stats
        decisions = CounterMetricFamily(
            f"{ns}_decisions",
            "Access decisions by outcome (allowed, denied, reported), rule and request source",
            labels=["outcome", "reason", "source"],
        )
        for decision, count in stats.decisions.items():
            if count:
                source = decision.source.value if decision.source is not None else "none"
                decisions.add_metric(
                    [_outcome(decision.allowed, decision.reported), decision.reason.value, source], count
                )
        yield decisions
        yield CounterMetricFamily(
            f"{ns}_failed_closed",
            "Checks refused because the store was unavailable",
            value=stats.failed_closed,
        )

        cache = v.cache
        yield GaugeMetricFamily(f"{ns}_cache_entries", "Tokens in the local cache", value=len(cache))
        yield CounterMetricFamily(
            f"{ns}_cache_misses", "Checks not answered by the local cache", value=stats.misses
        )
        yield CounterMetricFamily(
            f"{ns}_cache_evictions",
            "Entries pushed out of the local cache by its size bound",
            value=cache.evictions,
        )
        yield CounterMetricFamily(
            f"{ns}_cache_invalidations",
            "Entries dropped because the store reported a change",
            value=cache.invalidations,
        )
        yield CounterMetricFamily(
            f"{ns}_cache_expirations",
            "Times every entry was made stale (invalidations may have been missed)",
            value=cache.expirations,
        )

        counts = stats.read_latency_counts
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, READ_LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            f"{ns}_store_read_seconds",
            "Latency of reading one token's restrictions from the store",
            buckets=buckets,
            sum_value=stats.read_latency_sum,
        )
        yield CounterMetricFamily(f"{ns}_store_errors", "Failed store reads", value=stats.store_errors)
        breaker = GaugeMetricFamily(
            f"{ns}_circuit_breaker_state",
            "1 for the store circuit breaker's current state (on a Cluster: the worst of its primaries')",
            labels=["state"],
        )
        worst = v.shards.breaker_state()
        for state in BreakerState:
            breaker.add_metric([state.value], 1 if worst is state else 0)
        yield breaker
        listener = v.listener
        yield GaugeMetricFamily(
            f"{ns}_invalidation_connected",
            "1 while every store node's invalidation connection is up (the cache is coherent)",
            value=1 if listener is not None and listener.connected.is_set() else 0,
        )

        log = v.denial_log
        if log is not None:
            written = CounterMetricFamily(
                f"{ns}_denial_log", "Denials for the denial log, by fate", labels=["fate"]
            )
            written.add_metric(["recorded"], log.recorded)
            written.add_metric(["dropped"], log.dropped)
            written.add_metric(["failed"], log.failed)
            yield written
            yield GaugeMetricFamily(f"{ns}_denial_log_queue", "Denials waiting to be written", value=len(log))


def install(validator: Validator, registry: CollectorRegistry = REGISTRY) -> ValidatorCollector:
    """Register a collector for `validator` (unregister it with `registry.unregister`)."""
    collector = ValidatorCollector(validator)
    registry.register(collector)
    return collector
