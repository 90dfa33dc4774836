"""The denial streams in Redis (see `validator.denials` for the in-process log that fills them).

A stored token's denials go to a capped, expiring stream of its own; those of tokens without a
record go to a sharded unknown-token log. `Store` owns a `DenialStreams` for these commands and
the lookup of the entry an `Access-Denied-Ref` names (`find_denial`, see `denial_refs`).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from validator.errors import StoreUnavailable
from validator.store.denial_refs import DenialRef, DenialRefs
from validator.store.layout import _script, _store_errors, fingerprint
from validator.store.wire import Multiplexer, WireError, Wires
from validator.store.wire import _pack as _pack_command

_log = logging.getLogger("validator")
_SUMMARY_LUA = _script("summary.lua")  # the script `Store._summary_script` runs

# What is stored of a denial besides its times, count and token: (source, seen, reason, mode,
# origin, tag, client); `tag`: 4 hex digits of the request's tag (`denial_refs.request_tag`), which
# ties an `Access-Denied-Ref` to its entry; `client`: the client address ("-": none), which only
# the token's summary keeps (`summary.lua`), not the stream.
Description = tuple[str, str, str, str, str, str, str]
# One denial-log entry: (token hash, at, count, first, description): `count` denials of the same
# request, the first at `first`, the last at `at` (wall-clock seconds). A plain tuple: the writer
# makes one per denial in a flood of distinct tokens.
DenialEntry = tuple[str, float, int, float, Description]
# One stream of a batch: (its hash tag, its cap, whether its entries name their token (the
# unknown-token log), the entries to append in order).
_Stream = tuple[str, int, bool, list[DenialEntry]]


# How far from a reference's time its entry may be written (stream IDs are Redis's clock at the
# write, later than the denial by the writer's delay, and apart from the validator's clock by
# however far the two hosts' clocks are); how far its recorded time may be from the reference's.
REF_WINDOW_MS = 10 * 60 * 1000
REF_SLACK_MS = 1000


class FoundDenial(NamedTuple):
    """One denial-log entry found for a reference."""

    token_hash: str | None  # the token's whole hash (its own stream); None: the unknown-token log
    fingerprint: str
    entry: dict[str, str]  # the stream entry's fields (at, source, seen, ... tag; count, first)
    key: str  # the stream


class FoundDenials(NamedTuple):
    """What `find_denial` found: the matching entries (best first), the streams read, and the
    time of the oldest entry those streams still hold (None: no stream)."""

    matches: list[FoundDenial]
    streams: list[str]
    oldest_ms: int | None


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _id_ms(id_: object) -> int:
    text = id_.decode() if isinstance(id_, bytes) else str(id_)
    return int(text.partition("-")[0])


class DenialStreams:
    """The denial-log commands of a `Store`: on its `client`, under its `key_prefix`, through its
    multiplexed `wires` where it has some; `secret_mac` keys the `Access-Denied-Ref` cipher."""

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        wires: Wires | None,
        secret_mac: hmac.HMAC,
        summary_script: AsyncScript,
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self._wires = wires
        self._hmac = secret_mac
        self._summary_script = summary_script

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
        tag = self.UNKNOWN_SHARD_TAGS[_shard(token_hash, len(self.UNKNOWN_SHARD_TAGS))]
        return f"{self.key_prefix.rstrip(':')}-denials:unknown:{{{tag}}}"

    def unknown_denials_keys(self) -> list[str]:
        """Every shard of the unknown-token log."""
        prefix = self.key_prefix.rstrip(":")
        return [f"{prefix}-denials:unknown:{{{tag}}}" for tag in self.UNKNOWN_SHARD_TAGS]

    async def append_denials(
        self,
        stored: Sequence[DenialEntry],
        unknown: Sequence[DenialEntry] = (),
        *,
        max_length: int,
        unknown_length: int,
        ttl: float,
    ) -> int:
        """Write one batch of denial entries in one pipelined round trip (one per node on a
        cluster); returns how many denials (entries weighted by their `count`) were not written.

        `stored`: entries of stored tokens, each appended to its token's stream, trimmed to about
        `max_length`; `unknown`: entries of tokens without a record (unknown tokens), to
        the unknown-token log under the token's fingerprint, about `unknown_length` in all.
        Every stream written expires `ttl` seconds after its last write. Raises
        `StoreUnavailable` when nothing could be written.

        The commands go through the store's multiplexed connections (`validator.store.wire`)
        where it has them: a redis-py pipeline costs ~20 us of Python per XADD, most of the
        ~22 us each denial cost the process before (benchmarks: `denials`). Streams whose node
        has no multiplexed connection (`memory://`, a cluster's slot map not known yet), and
        commands a cluster redirected, go through redis-py, which follows redirections.
        """
        shard_length = unknown_shard_length(unknown_length)
        streams: dict[str, _Stream] = {}
        # Per stream, only the newest `cap` entries of the batch are written: the older ones would
        # be trimmed by the same batch's XADDs (MAXLEN ~ cap) before anyone could read them, so
        # what the stream holds afterwards is the same. In a flood of invented tokens (a batch
        # of thousands over the 16 shards of ~63) that skips most of the writing.
        own = f"{self.key_prefix.rstrip(':')}-denials:{{"
        per_token: dict[str, list[DenialEntry]] = {}
        for entry in stored:
            per_token.setdefault(entry[0], []).append(entry)
        # Each stored token's summary (`summary.lua`) takes every denial of the batch, those the
        # capped stream is about to trim included: one call per token and batch.
        summaries: list[_Summary] = []
        pexpire_ms = max(1, int(ttl * 1000))
        for token_hash, entries in per_token.items():
            key = f"{own}{token_hash}}}"
            streams[key] = (token_hash, max_length, False, entries[-max_length:])
            summaries.append((token_hash, f"{key}:summary", *_summary_pairs(entries, SUMMARY_PAIRS)))
        shards = self.unknown_denials_keys()
        per_shard: list[list[DenialEntry]] = [[] for _ in shards]
        # Newest first, so that once every shard holds its newest `shard_length` the older
        # entries need not even be assigned a shard: in a flood of invented tokens (batches of
        # ~5,000) that is ~3/4 of them, ~0.2 us per denial (benchmarks: `denials`, 1.9 -> 1.7).
        full = 0
        for entry in reversed(unknown):
            entries = per_shard[_shard(entry[0], len(shards))]
            if len(entries) < shard_length:
                entries.append(entry)
                if len(entries) == shard_length:
                    full += 1
                    if full == len(shards):
                        break
        for shard, entries in enumerate(per_shard):
            if entries:
                entries.reverse()
                streams[shards[shard]] = (self.UNKNOWN_SHARD_TAGS[shard], shard_length, True, entries)
        if not streams:
            return 0
        if self._wires is None:
            failed = await self._append_by_redis_py(streams, pexpire_ms, everything=True)
        else:
            failed = await self._append_by_wire(self._wires, streams, pexpire_ms)
        if summaries:
            await self._summarise(summaries, pexpire_ms)
        return failed

    async def _summarise(self, summaries: list[_Summary], pexpire_ms: int) -> None:
        """Run the batch's summary calls (`summary.lua`), on the multiplexed connections where
        the store has them (one SCRIPT LOAD, then the EVALSHAs, packed as one request per
        connection), the rest and any that failed there through redis-py. A summary that cannot
        be written is not a lost denial (the stream has it): only logged at debug level."""
        script = self._summary_script
        retry: list[_Summary] = []
        if self._wires is not None:
            wires = self._wires
            packer = _SummaryPacker(script.sha, pexpire_ms)
            batches: dict[int, tuple[Multiplexer, list[bytes], list[_Summary]]] = {}
            for call in summaries:
                wire = wires.for_tag(call[0])
                if wire is None:
                    retry.append(call)
                    continue
                batch = batches.get(id(wire))
                if batch is None:
                    batch = batches[id(wire)] = (wire, [_pack_command(("SCRIPT", "LOAD", _SUMMARY_LUA))], [])
                batch[1].append(packer.pack(call[1], call[2], call[3]))
                batch[2].append(call)
            for wire, data, calls in batches.values():
                reply = wire.send_packed(b"".join(data), len(calls) + 1)
                if reply is None:
                    retry += calls
                    continue
                try:
                    replies = await reply
                except WireError:
                    retry += calls
                    continue
                retry += [
                    call
                    for call, one in zip(calls, replies[1:], strict=True)
                    if isinstance(one, BaseException)
                ]
        else:
            retry = summaries
        if not retry:
            return
        try:
            with _store_errors():
                for attempt in range(2):
                    pipe = self.client.pipeline(transaction=False)
                    for _, key, pairs, left in retry:
                        pipe.execute_command(
                            "EVALSHA", script.sha, 1, key, *_summary_args(pairs, left, pexpire_ms)
                        )
                    replies = await pipe.execute(raise_on_error=False)
                    if attempt or not any(isinstance(one, NoScriptError) for one in replies):
                        break
                    await self.client.script_load(_SUMMARY_LUA)  # a server that never saw it
            errors = [one for one in replies if isinstance(one, Exception)]
            if errors:
                _log.debug("denial summary: %d summaries not written: %s", len(errors), errors[0])
        except Exception as error:  # the stream holds the denials: only the summary is lost, never the writer
            _log.debug("denial summary: %d summaries not written: %s", len(retry), error)

    def denial_summary_key(self, token_hash: str) -> str:
        """The stored token's denial summary (`summary.lua`), in its stream's slot."""
        return f"{self.denials_key(token_hash)}:summary"

    async def denial_summary(
        self, token_hash: str
    ) -> tuple[list[dict[str, str]], dict[str, tuple[int, int]]] | None:
        """The token's denial summary, or None when it has none (expired, or written by a validator
        from before summaries): its pairs as stream entries are (source, seen, origin, count,
        first, at, and the `client`), and per client the pairs kept and the pairs let go."""
        with _store_errors():
            raw = await self.client.hgetall(self.denial_summary_key(token_hash))
        if not raw:
            return None
        return parse_summary({_text(k): _text(v) for k, v in raw.items()})

    async def _append_by_wire(self, wires: Wires, streams: dict[str, _Stream], pexpire_ms: int) -> int:
        # Connect first (a wire is up as soon as a cache miss has read through it), then send
        # every command without awaiting: nothing can close a connection between two sends.
        routes: list[tuple[str, Multiplexer | None]] = []
        ready: dict[int, bool] = {}
        for key, stream in streams.items():
            wire = wires.for_tag(stream[0])
            if wire is not None and id(wire) not in ready:
                ready[id(wire)] = await _connected(wire)
            routes.append((key, wire if wire is not None and ready[id(wire)] else None))
        # Per connection, the RESP of all of its commands, packed here (`_Packer`) and sent as
        # one request (`Multiplexer.send_packed`): one future for the batch, not one per XADD.
        # hiredis.pack_command and a future per command cost ~3.5 us per XADD written.
        packer = _Packer(pexpire_ms)
        # id(wire) -> (wire, its packed commands, the streams sent on it with their command count)
        batches: dict[int, tuple[Multiplexer, list[bytes], list[tuple[str, int]]]] = {}
        elsewhere: dict[str, _Stream] = {}
        for key, wire in routes:
            if wire is None:
                elsewhere[key] = streams[key]
                continue
            batch = batches.get(id(wire))
            if batch is None:
                batch = batches[id(wire)] = (wire, [], [])
            # The stream's XADDs, then one PEXPIRE, on the same connection: one expiry per
            # stream and batch, so a flood of one token costs one command per entry, not two.
            batch[2].append((key, packer.pack(batch[1], key, streams[key])))
        # stream key -> the outcome of each of its XADDs, then of its PEXPIRE
        outcomes: dict[str, list[Any]] = {}
        sent: list[tuple[asyncio.Future[list[Any]] | None, list[tuple[str, int]]]] = []
        for wire, data, keys in batches.values():
            sent.append((wire.send_packed(b"".join(data), sum(n for _, n in keys)), keys))
        futures = [reply for reply, _ in sent if reply is not None]
        if futures:
            try:
                await asyncio.wait(futures)
            except asyncio.CancelledError:
                # Stopped mid-write: the replies' failures (the store closing) are nobody's news.
                for future in futures:
                    future.add_done_callback(_quiet)
                raise
        for reply, keys in sent:
            error: BaseException | None = (
                WireError("not sent", "connection") if reply is None else reply.exception()
            )
            replies = reply.result() if reply is not None and error is None else None
            at = 0
            for key, n in keys:
                outcomes[key] = [error] * n if replies is None else replies[at : at + n]
                at += n
        failed = written = 0
        for key, results in outcomes.items():
            tag, cap, named, entries = streams[key]
            retry: list[DenialEntry] = []
            expired = True
            for result, entry in zip(results, [*entries, None], strict=True):
                if not isinstance(result, BaseException):  # an error reply is a WireError
                    written += entry[2] if entry is not None else 0
                elif wires.redirected(tag, result):
                    # A cluster moved the slot, or the node is gone: redis-py follows it (the
                    # stream's PEXPIRE goes with it, after its XADDs there).
                    if entry is not None:
                        retry.append(entry)
                    else:
                        expired = False
                elif entry is not None:
                    failed += entry[2]
            if retry or not expired:
                elsewhere[key] = (tag, cap, named, retry)
        if elsewhere:
            try:
                failed += await self._append_by_redis_py(elsewhere, pexpire_ms, everything=not written)
            except StoreUnavailable:
                if not written:
                    raise
                failed += sum(entry[2] for _, _, _, entries in elsewhere.values() for entry in entries)
        elif failed and not written:
            raise StoreUnavailable("denial log: the store refused every denial of the batch")
        return failed

    async def _append_by_redis_py(
        self, streams: dict[str, _Stream], pexpire_ms: int, *, everything: bool
    ) -> int:
        """The streams' XADDs, then one PEXPIRE each, in one redis-py pipeline; the denials not
        written. `everything`: these are all of the batch (raise `StoreUnavailable` if none
        could be written, as when the store is down)."""
        commands: list[tuple[tuple[str | int, ...], int]] = []
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for key, (_, cap, named, entries) in streams.items():
                for entry in entries:
                    args = _xadd(key, cap, entry, entry[0][:_FINGERPRINT] if named else None)
                    pipe.execute_command(*args)
                    commands.append((args, entry[2]))
                pipe.pexpire(key, pexpire_ms)
                commands.append((("PEXPIRE", key), 0))
            replies = await pipe.execute(raise_on_error=False)
        failed = sum(
            denials
            for (_, denials), reply in zip(commands, replies, strict=True)
            if isinstance(reply, Exception)
        )
        total = sum(denials for _, denials in commands)
        if everything and total and failed == total:
            error = next(reply for reply in replies if isinstance(reply, Exception))
            raise StoreUnavailable(f"restriction store unavailable: {error}")
        return failed

    async def denials(
        self, token_hash: str, *, since_ms: int = 0, count: int = 100, own: bool = True
    ) -> list[dict[str, str]]:
        """The token's most recent denials (newest first), at or after `since_ms`: those of its
        own stream (unless not `own`), and those it got while it had no stored record (from the
        unknown-token log)."""
        low = f"{since_ms}-0" if since_ms else "-"
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            if own:
                pipe.xrevrange(self.denials_key(token_hash), max="+", min=low, count=count)
            # The whole shard (bounded by its cap): the token's entries are among the others'.
            pipe.xrevrange(self.unknown_denials_key(token_hash), max="+", min=low)
            replies = await pipe.execute()
        own_entries, shard = replies if own else ([], replies[0])
        name = fingerprint(token_hash)
        unknown = [(id_, fields) for id_, fields in shard or [] if (fields or {}).get("token") == name]
        entries = _newest_first([own_entries or [], unknown])[:count]
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
        """Delete the token's own stream and summary (its entries in the unknown-token log age
        out there)."""
        with _store_errors():
            # One key per DEL: a multi-key command on a slot being migrated fails (TRYAGAIN) while
            # its keys sit on both sides, where a single-key one follows the ASK redirection.
            await self.client.delete(self.denials_key(token_hash))
            await self.client.delete(self.denial_summary_key(token_hash))

    @functools.cached_property
    def denial_refs(self) -> DenialRefs:
        """The cipher of `Access-Denied-Ref` values, keyed by (a hash of) the token secret: the
        validators and the admin tools of one secret read each other's references."""
        mac = self._hmac.copy()
        mac.update(b"\0token-access-validator denial-ref")  # no token holds a NUL: no token's hash
        return DenialRefs(mac.digest())

    async def find_denial(self, ref: DenialRef, *, window_ms: int = REF_WINDOW_MS) -> FoundDenials:
        """The denial-log entries a LOGGED reference names: those of its token (the 7 hash
        characters it holds), written within `window_ms` of its time, whose span of merged
        repeats (`first`..`at`) holds its time (give or take REF_SLACK_MS), with its request tag;
        of those, the nearest in time. One, unless two requests' tags collide (1 in 65,536).

        A stored token's stream is found by a SCAN for its hash characters (on a Cluster, of
        every primary), the unknown-token log in its 16 shards; in each stream, only the entries
        within `window_ms` of the reference's time are read (XRANGE on the stream IDs, which are
        Redis's times of writing: the window covers the writer's delay and clocks apart)."""
        if not ref.token:
            return FoundDenials([], [], None)
        prefix = self.key_prefix.rstrip(":")
        if ref.unknown:
            keys = self.unknown_denials_keys()
        else:
            pattern = _glob_escape(f"{prefix}-denials:{{{ref.token}") + "*}"
            found: set[str] = set()
            with _store_errors():
                async for key in self.client.scan_iter(match=pattern, count=1000, _type="stream"):
                    found.add(key.decode() if isinstance(key, bytes) else str(key))
            keys = sorted(found)
        if not keys:
            return FoundDenials([], [], None)
        low, high = max(0, ref.at_ms - window_ms), ref.at_ms + window_ms
        with _store_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.xrange(key, min=f"{low}-0", max=f"{high}-0")
                pipe.xrange(key, min="-", max="+", count=1)  # the oldest entry left
            replies = await pipe.execute()
        tag = f"{ref.tag:04x}"
        matches: list[tuple[int, FoundDenial]] = []
        oldest: int | None = None
        own = f"{prefix}-denials:{{"
        for key, window, first in zip(keys, replies[::2], replies[1::2], strict=True):
            for id_, _ in first or []:
                at = _id_ms(id_)
                oldest = at if oldest is None else min(oldest, at)
            for _, raw in window or []:
                fields = {str(name): str(value) for name, value in (raw or {}).items()}
                if fields.get("tag") != tag:
                    continue
                token = fields.pop("token", "") if ref.unknown else key[len(own) : -1]
                if not token.startswith(ref.token):
                    continue
                try:
                    last = int(fields.get("at", ""))
                    since = int(fields.get("first", last))
                except ValueError:
                    continue
                # The writer's clock reading and the reply's may differ by a wall-clock step.
                if since - REF_SLACK_MS <= ref.at_ms <= last + REF_SLACK_MS:
                    distance = max(since - ref.at_ms, ref.at_ms - last, 0)
                    token_hash = None if ref.unknown else token
                    matches.append((distance, FoundDenial(token_hash, fingerprint(token), fields, key)))
        # Only the nearest: identical requests of the token (the same tag) written apart (two
        # batches) both match within the slack; the one whose span holds the time is the one.
        nearest = min((distance for distance, _ in matches), default=0)
        return FoundDenials([match for distance, match in matches if distance == nearest], keys, oldest)

    async def hashes_starting(self, fingerprint_: str, count: int = 1000) -> list[str]:
        """The hashes of the stored tokens whose hash starts with `fingerprint_` (a SCAN of the
        restriction keys): the record an unknown-token log entry's token may have been given
        since. Usually none or one."""
        pattern = _glob_escape(f"{self.key_prefix}{{{fingerprint_}") + "*}:m"
        found: set[str] = set()
        with _store_errors():
            async for key in self.client.scan_iter(match=pattern, count=count):
                name = key.decode() if isinstance(key, bytes) else str(key)
                start = len(self.key_prefix) + 1
                token_hash = name[start : -len("}:m")]
                if token_hash.startswith(fingerprint_) and "}" not in token_hash:
                    found.add(token_hash)
        return sorted(found)


def _xadd(key: str, max_length: int, entry: DenialEntry, token: str | None) -> tuple[str | int, ...]:
    """The XADD of one entry: the per-token stream's format, which `validator-admin denials` and
    `check --replay` read (at, source, seen, reason, mode, origin, tag; `count` and `first` when
    the entry holds repeated denials); the unknown-token log's entries also name their `token`
    (by fingerprint)."""
    _, at, count, first, (source, seen, reason, mode, origin, tag, _) = entry
    head = ("XADD", key, "MAXLEN", "~", max_length, "*") if token is None else (
        "XADD", key, "MAXLEN", "~", max_length, "*", "token", token
    )  # fmt: skip
    fields = (
        "at",
        int(at * 1000),
        "source",
        source,
        "seen",
        seen,
        "reason",
        reason,
        "mode",
        mode,
        "origin",
        origin,
        "tag",
        tag,
    )
    if count == 1:
        return head + fields
    return head + fields + ("count", count, "first", int(first * 1000))


# The most (client, source, seen, origin) pairs a token's summary keeps (`summary.lua`): in Redis
# (MEMORY USAGE, redis 7.0) ~38-51 KB a token with hosts of ~25 characters, ~182 KB with the
# longest values the log keeps, for `denial_ttl` after its last denial. A batch passes at most
# this many pairs a call (`_summary_pairs`), so the script's work per call is bounded too.
SUMMARY_PAIRS = 256
_US = "\x1f"  # the summary's field separator: never inside a field's parts (`_part`)
_EVICTED = "-evicted-"


def _part(text: str) -> str:
    return text.replace(_US, "?") if _US in text else text


# One pair of a summary call: a description of it (client, source, seen and origin are what
# count), requests, first and last time (ms).
_Pair = tuple[Description, int, int, int]
# One summary call: the token's hash, its summary's key, its pairs, its clients' pairs left out.
_Summary = tuple[str, str, list[_Pair], dict[str, int]]


def _summary_pairs(entries: Sequence[DenialEntry], cap: int) -> tuple[list[_Pair], dict[str, int]]:
    """One token's batch for its `summary.lua` call: the entries summed per (client, source,
    seen, origin); when there are more than `cap` pairs, `cap` of them chosen fairly (a
    client's by requests, then the newest; the clients in turn), and per client how many of its
    pairs were left out."""
    if len(entries) == 1:  # a flood of distinct tokens: nothing to sum
        _, at, count, first, description = entries[0]
        return [(description, count, int(first * 1000), int(at * 1000))], {}
    pairs: dict[tuple[str, str, str, str], list[Any]] = {}
    for _, at, count, first, description in entries:
        key = (description[6], description[0], description[1], description[4])
        found = pairs.get(key)
        if found is None:
            pairs[key] = [description, count, int(first * 1000), int(at * 1000)]
        else:
            found[1] += count
            found[2] = min(found[2], int(first * 1000))
            found[3] = max(found[3], int(at * 1000))
    chosen: list[_Pair] = [(d, n, a, b) for d, n, a, b in pairs.values()]
    left: dict[str, int] = {}
    if len(chosen) > cap:
        # Fairly, as the script evicts, so that one client's flood in a batch leaves out only
        # its own pairs.
        chosen.sort(key=lambda pair: (pair[1], pair[3]), reverse=True)
        per_client: dict[str, list[_Pair]] = {}
        for pair in chosen:
            per_client.setdefault(pair[0][6], []).append(pair)
        chosen = []
        for turn in itertools.zip_longest(*per_client.values()):
            chosen += (pair for pair in turn if pair is not None)
            if len(chosen) >= cap:
                break
        chosen = chosen[:cap]
        taken: dict[str, int] = {}
        for pair in chosen:
            taken[pair[0][6]] = taken.get(pair[0][6], 0) + 1
        for client, its in per_client.items():
            if len(its) > taken.get(client, 0):
                left[client] = len(its) - taken.get(client, 0)
    return chosen, left


def _summary_args(pairs: list[_Pair], left: dict[str, int], pexpire_ms: int) -> list[str | int]:
    """The ARGV of a `summary.lua` call (see there)."""
    args: list[str | int] = [SUMMARY_PAIRS, pexpire_ms]
    for description, count, first_ms, last_ms in pairs:
        client, source, seen, origin = description[6], description[0], description[1], description[4]
        args += (_part(client), _part(source), _part(seen), _part(origin), count, first_ms, last_ms)
    if left:
        args.append(_EVICTED)
        for client, n in left.items():
            args += (_part(client), n)
    return args


class _SummaryPacker:
    """The RESP of a batch's `summary.lua` calls (EVALSHA sha 1 key ARGV, as `_summary_args`
    gives it), a description's four parts packed once per batch: in a flood of distinct stored
    tokens hiredis.pack_command of the call cost ~1 us per denial more."""

    def __init__(self, sha: str, pexpire_ms: int) -> None:
        self._head = b"$7\r\nEVALSHA\r\n%b$1\r\n1\r\n" % _bulk(sha)
        self._options = _bulk_int(SUMMARY_PAIRS) + _bulk_int(pexpire_ms)
        self._parts: dict[Description, bytes] = {}

    def pack(self, key: str, pairs: list[_Pair], left: dict[str, int]) -> bytes:
        parts = self._parts
        if len(pairs) == 1 and not left:  # a flood of distinct tokens: one denial each
            description, count, first_ms, last_ms = pairs[0]
            packed = parts.get(description)
            if packed is None:
                packed = parts[description] = b"".join(_bulk(_part(description[i])) for i in (6, 0, 1, 4))
            last = _bulk_int(last_ms)
            return b"*13\r\n%b%b%b%b%b%b%b" % (
                self._head,
                _bulk(key),
                self._options,
                packed,
                b"$1\r\n1\r\n" if count == 1 else _bulk_int(count),
                last if first_ms == last_ms else _bulk_int(first_ms),
                last,
            )
        out = [b"", self._head, _bulk(key), self._options]
        for description, count, first_ms, last_ms in pairs:
            packed = parts.get(description)
            if packed is None:
                packed = parts[description] = b"".join(_bulk(_part(description[i])) for i in (6, 0, 1, 4))
            out += (packed, _bulk_int(count), _bulk_int(first_ms), _bulk_int(last_ms))
        arity = 6 + 7 * len(pairs)  # EVALSHA sha 1 key cap expiry, 7 per pair
        if left:
            out.append(_bulk(_EVICTED))
            for client, n in left.items():
                out += (_bulk(_part(client)), _bulk_int(n))
            arity += 1 + 2 * len(left)
        out[0] = b"*%d\r\n" % arity
        return b"".join(out)


def parse_summary(raw: Mapping[str, str]) -> tuple[list[dict[str, str]], dict[str, tuple[int, int]]]:
    """A summary's HASH (see `summary.lua`) as its pairs, in the shape of stream entries (with
    their `client`), and per client (pairs kept, pairs let go). What cannot be read is skipped."""
    pairs: list[dict[str, str]] = []
    clients: dict[str, tuple[int, int]] = {}
    for field, value in raw.items():
        if field.startswith("p"):
            parts = field[1:].split(_US)
            numbers = value.split(" ")
            if len(parts) != 4 or len(numbers) != 3:
                continue
            client, source, seen, origin = parts
            count, first, at = numbers
            pairs.append(
                {"client": client, "source": source, "seen": seen, "origin": origin}
                | {"count": count, "first": first, "at": at}
            )
        elif field.startswith("c"):
            try:
                kept, evicted = (int(n) for n in value.split(" "))
            except ValueError:
                continue
            clients[field[1:]] = (kept, evicted)
    return pairs, clients


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _bulk(text: str) -> bytes:
    """One RESP bulk string (UTF-8, strict, as hiredis.pack_command encodes text)."""
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _bulk_int(value: int) -> bytes:
    data = b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(data), data)


class _Packer:
    """The RESP of a batch's XADDs (the commands `_xadd` gives, byte for byte as
    hiredis.pack_command packs them) and PEXPIREs, built from parts packed once: a stream's
    command head once per stream, a description once per batch. With `send_packed` (one future
    per connection, not per command) this took the writer from ~2.4 to ~1.9 us of CPU per denial
    in a flood of distinct tokens (one XADD written per ~5 denials; benchmarks: `denials`).
    """

    def __init__(self, pexpire_ms: int) -> None:
        self._pexpire = _bulk_int(pexpire_ms)
        self._described: dict[Description, bytes] = {}

    def pack(self, out: list[bytes], key: str, stream: _Stream) -> int:
        """Append the stream's XADDs and its PEXPIRE to `out`; how many commands that is."""
        _, cap, named, entries = stream
        packed_key = _bulk(key)
        # After the array's length: XADD key MAXLEN ~ cap * [token]; an entry's own fields follow.
        head = b"$4\r\nXADD\r\n%b$6\r\nMAXLEN\r\n$1\r\n~\r\n%b$1\r\n*\r\n" % (packed_key, _bulk_int(cap))
        arity = 20
        if named:
            head += b"$5\r\ntoken\r\n"
            arity += 2
        single = b"*%d\r\n%b" % (arity, head)
        repeated = b"*%d\r\n%b" % (arity + 4, head)
        described = self._described
        for token_hash, at, count, first, description in entries:
            fields = described.get(description)
            if fields is None:
                source, seen, reason, mode, origin, tag, _ = description
                fields = described[description] = b"".join(
                    (
                        b"$6\r\nsource\r\n", _bulk(source), b"$4\r\nseen\r\n", _bulk(seen),
                        b"$6\r\nreason\r\n", _bulk(reason), b"$4\r\nmode\r\n", _bulk(mode),
                        b"$6\r\norigin\r\n", _bulk(origin), b"$3\r\ntag\r\n", _bulk(tag),
                    )
                )  # fmt: skip
            parts = [single if count == 1 else repeated]
            if named:
                parts.append(_bulk(token_hash[:_FINGERPRINT]))
            parts += (b"$2\r\nat\r\n", _bulk_int(int(at * 1000)), fields)
            if count != 1:
                parts += (
                    b"$5\r\ncount\r\n",
                    _bulk_int(count),
                    b"$5\r\nfirst\r\n",
                    _bulk_int(int(first * 1000)),
                )
            out.append(b"".join(parts))
        out.append(b"*3\r\n$7\r\nPEXPIRE\r\n%b%b" % (packed_key, self._pexpire))
        return len(entries) + 1


_FINGERPRINT = len(fingerprint("x" * 64))  # `fingerprint` is a prefix of the hash


def _shard(token_hash: str, shards: int) -> int:
    """The unknown-log shard of a token: the sum of its hash's bytes, modulo `shards`. For hashes up to
    256 bytes (ours are 22) Adler-32's low half is 1 + that sum exactly, computed in C: ~0.1 us
    where `sum(token_hash.encode())` took ~0.4 us per denial in a flood of invented tokens."""
    data = token_hash.encode()
    if len(data) > 256:
        return sum(data) % shards
    return ((zlib.adler32(data) & 0xFFFF) - 1) % shards


def unknown_shard(token_hash: str) -> int:
    """The shard of the unknown-token log (`DenialStreams.unknown_denials_key`) that takes the
    denials of `token_hash`, as an index into `DenialStreams.UNKNOWN_SHARD_TAGS`."""
    return _shard(token_hash, len(DenialStreams.UNKNOWN_SHARD_TAGS))


def unknown_shard_length(unknown_length: int) -> int:
    """How many entries each shard of the unknown-token log keeps, for `unknown_length` in all:
    of a batch, `append_denials` writes no more than the newest this many per shard."""
    return -(-unknown_length // len(DenialStreams.UNKNOWN_SHARD_TAGS))


def _quiet(reply: asyncio.Future[Any]) -> None:
    """Take a reply's failure as seen (asyncio logs one that nobody retrieved)."""
    if not reply.cancelled():
        reply.exception()


async def _connected(wire: Multiplexer) -> bool:
    """Whether `wire` is connected, connecting it if need be (False if it cannot be)."""
    ping = wire.send_now("PING")  # its reply is not needed: one PING per connection and batch
    if ping is not None:
        ping.add_done_callback(_quiet)
        return True
    try:
        await wire.execute("PING")
    except WireError:
        return False
    return True


def _newest_first(streams: Sequence[Sequence[tuple[str, Mapping[str, str] | None]]]) -> list[dict[str, str]]:
    """The entries of several XREVRANGE replies as one list, newest first (by stream ID)."""
    merged = [(id_, fields) for stream in streams for id_, fields in stream]
    merged.sort(key=lambda entry: tuple(int(part) for part in str(entry[0]).split("-")), reverse=True)
    return [{str(name): str(value) for name, value in (fields or {}).items()} for _, fields in merged]
