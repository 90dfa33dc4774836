"""The denial streams in Redis (see `validator.denials` for the in-process log that fills them).

A stored token's denials go to a capped, expiring stream of its own; those of tokens without a
record go to a sharded unknown-token log. `Store` has these commands through `DenialStreams`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

    from validator.model import DeniedRequest

from validator.store.layout import _store_errors, fingerprint


class DenialStreams:
    """The denial-log commands of `Store` (on its `client`, under its `key_prefix`)."""

    client: Any
    key_prefix: str

    # The unknown-token log is 16 capped streams, one per hash tag below: tag k hashes (CRC16,
    # as Redis Cluster does) into the k-th sixteenth of the 16,384 slots, so on a cluster the
    # shards spread over the primaries instead of making one slot hot during a flood. Elsewhere
    # the tags mean nothing. tests/integration/test_denials.py checks the slots.
    UNKNOWN_SHARD_TAGS = (
        "10", "3", "61", "43", "11", "2", "60", "42", "12", "1", "63", "41", "13", "0", "62", "40",
    )  # fmt: skip

    def denials_key(self, token_hash: str) -> str:
        """The stored token's capped, expiring stream of recent denials (see `validator.denials`).

        Deliberately outside `key_prefix`: validators track that prefix for invalidations, and a
        flood of denied requests must not become a flood of invalidation messages (nor evict the
        very tokens being denied).
        """
        return f"{self.key_prefix.rstrip(':')}-denials:{{{token_hash}}}"

    def unknown_denials_key(self, token_hash: str) -> str:
        """The shard of the unknown-token log that holds the denials of `token_hash` while it
        has no stored record: all of one token's in one shard, so a single noisy token pushes
        out only a sixteenth of the others' history."""
        # Any deterministic spread will do: the hash is already uniform.
        tag = self.UNKNOWN_SHARD_TAGS[sum(token_hash.encode()) % len(self.UNKNOWN_SHARD_TAGS)]
        return f"{self.key_prefix.rstrip(':')}-denials:unknown:{{{tag}}}"

    def unknown_denials_keys(self) -> list[str]:
        """Every shard of the unknown-token log."""
        prefix = self.key_prefix.rstrip(":")
        return [f"{prefix}-denials:unknown:{{{tag}}}" for tag in self.UNKNOWN_SHARD_TAGS]

    async def append_denials(
        self,
        stored: Sequence[DeniedRequest],
        unknown: Sequence[DeniedRequest] = (),
        *,
        max_length: int,
        unknown_length: int,
        ttl: float,
    ) -> None:
        """Write one batch of denials in one pipelined round trip (one per node on a cluster).

        `stored`: denials of stored tokens, each appended to its token's stream, trimmed to about
        `max_length`; `unknown`: denials of tokens without a record (unknown tokens), to
        the unknown-token log under the token's fingerprint, about `unknown_length` in all.
        Every stream written expires `ttl` seconds after its last write.
        """
        shard_length = -(-unknown_length // len(self.UNKNOWN_SHARD_TAGS))
        written: dict[str, None] = {}
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for denial in stored:
                key = self.denials_key(denial.token_hash)
                pipe.xadd(key, _denial_fields(denial), maxlen=max_length, approximate=True)
                written[key] = None
            for denial in unknown:
                key = self.unknown_denials_key(denial.token_hash)
                fields = _denial_fields(denial, token=fingerprint(denial.token_hash))
                pipe.xadd(key, fields, maxlen=shard_length, approximate=True)
                written[key] = None
            # One expiry per stream and batch, after its last XADD: a flood of denials of one
            # token costs one command per denial, not two.
            for key in written:
                pipe.pexpire(key, max(1, int(ttl * 1000)))
            if written:
                await pipe.execute()

    async def denials(self, token_hash: str, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The token's most recent denials (newest first), at or after `since_ms`: those of its
        own stream, and those it got while it had no stored record (from the unknown-token log)."""
        low = f"{since_ms}-0" if since_ms else "-"
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.xrevrange(self.denials_key(token_hash), max="+", min=low, count=count)
            # The whole shard (bounded by its cap): the token's entries are among the others'.
            pipe.xrevrange(self.unknown_denials_key(token_hash), max="+", min=low)
            own, shard = await pipe.execute()
        name = fingerprint(token_hash)
        unknown = [(id_, fields) for id_, fields in shard or [] if (fields or {}).get("token") == name]
        entries = _newest_first([own or [], unknown])[:count]
        return [{k: v for k, v in fields.items() if k != "token"} for fields in entries]

    async def unknown_denials(self, *, since_ms: int = 0, count: int = 100) -> list[dict[str, str]]:
        """The most recent denials of tokens without a stored record (newest first), at or after
        `since_ms`, each naming its token by fingerprint (`token`)."""
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in self.unknown_denials_keys():
                pipe.xrevrange(key, max="+", min=f"{since_ms}-0" if since_ms else "-", count=count)
            shards = await pipe.execute()
        return _newest_first([shard or [] for shard in shards])[:count]

    async def delete_denials(self, token_hash: str) -> None:
        """Delete the token's own stream (its entries in the unknown-token log age out there)."""
        with _store_errors():
            await self.client.delete(self.denials_key(token_hash))


def _denial_fields(denial: DeniedRequest, token: str | None = None) -> dict[FieldT, EncodableT]:
    # The per-token stream's format, which `validator-admin denials` and `check --replay` read;
    # the unknown-token log's entries also name their `token` (by fingerprint).
    fields: dict[FieldT, EncodableT] = {
        "at": denial.at_ms,
        "source": denial.source,
        "seen": denial.seen,
        "reason": denial.reason,
        "mode": denial.mode,
        "origin": denial.origin,
    }
    return fields if token is None else {"token": token, **fields}


def _newest_first(streams: Sequence[Sequence[tuple[str, Mapping[str, str] | None]]]) -> list[dict[str, str]]:
    """The entries of several XREVRANGE replies as one list, newest first (by stream ID)."""
    merged = [(id_, fields) for stream in streams for id_, fields in stream]
    merged.sort(key=lambda entry: tuple(int(part) for part in str(entry[0]).split("-")), reverse=True)
    return [{str(name): str(value) for name, value in (fields or {}).items()} for _, fields in merged]
