"""Denial references: the short opaque `Access-Denied-Ref` value a 403 carries, and what it hides.

A reference is 16 bytes, enciphered with a key derived from the token secret, written as 32
hexadecimal digits (as a W3C trace-id; read case-insensitively). Deciphered it holds:

    byte 0        format version (high 4 bits), kind (3 bits), unknown-token log (1 bit)
    bytes 1-6     the denial's time, milliseconds since the Unix epoch
    bytes 7-13    the first 7 characters of the token's hash (its fingerprint starts so)
    bytes 14-15   the request's tag (which of the token's entries it is), or why it was refused

Without the secret a reference is 16 pseudorandom bytes: it says nothing of the rules, of the
token (not even whether it has a stored record) or of the service. With it, `validator-admin
denials --ref` finds the token's denial-log stream (a SCAN for its 7 hash characters, or the 16
unknown-token shards) and, in it, the entry written around that time with that tag. The cipher
is a 4-round Feistel network over two 8-byte halves with keyed BLAKE2b as the round function
(Luby-Rackoff: a pseudorandom permutation), from the standard library: ~3-4 us a reference on a
busy 2-vCPU machine, spent on 403 replies only (README, "A denial the support desk can find"),
and once per millisecond for the same denial repeated (a flood: one client, one token).
Base32 would be shorter, but Python 3.11's encoder is pure Python: 7 us more.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

__all__ = ["DROPPED", "LOGGED", "REFUSALS", "REFUSED", "UNLOGGED", "DenialRef", "DenialRefs"]

VERSION = 1
# What a reference says of its denial.
LOGGED = 0  # queued for the denial log (found there for `denial_ttl`, unless pushed out)
DROPPED = 1  # the denial log's queue was full (a flood): counted, never written
UNLOGGED = 2  # the validator keeps no denial log (`denial_log=False`)
REFUSED = 3  # refused before any token was checked: nothing names a token, nothing is logged
KINDS = {
    LOGGED: "logged",
    DROPPED: "dropped",
    UNLOGGED: "unlogged",
    REFUSED: "refused",
}
# Why a request was refused before any check (the tag of a REFUSED reference).
REFUSALS = {
    1: "ambiguous request: a repeated or conflicting Origin, Referer or token, or an oversized token",
    2: "malformed token: not 1 to max_token_length visible ASCII characters (never issued)",
    3: "request refused before any token check (unreadable, or refused by the forward-auth gate: "
    "peer not a trusted proxy, forward-auth headers missing or repeated)",
}
AMBIGUOUS, MALFORMED_TOKEN, UNREADABLE = 1, 2, 3
HASH_CHARS = 7
_NO_HASH = b"\0" * HASH_CHARS
_HASH_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ROUNDS = 4
_HEX = re.compile(r"[0-9a-fA-F]{32}")
_LOW48 = (1 << 48) - 1
_MEMO = 256  # references kept for the current millisecond


class DenialRef(NamedTuple):
    """What a reference holds (see the module docstring)."""

    kind: int
    unknown: bool  # the token had no stored record: its denial went to the unknown-token log
    at_ms: int
    token: str  # the first HASH_CHARS characters of the token's hash ("": none at hand)
    tag: int  # the request's tag (`request_tag`), or for REFUSED why (`REFUSALS`)


def request_tag(request: tuple[int, str | None, str | None]) -> int:
    """The tag of a request, (id of its decision, its Origin or Referer, its client IP): 16 bits
    of Python's hash, so the same in the writer (which stores it with the entry, `tag`) and in
    the reply (which puts it in the reference) of one process; meaningless elsewhere. It tells
    apart two entries of one token written around the same time (a merged flood interleaves
    several requests)."""
    return hash(request) & 0xFFFF


class DenialRefs:
    """Enciphers and deciphers references under one key (`DenialStreams.denial_refs`)."""

    def __init__(self, key: bytes) -> None:
        self._rounds = [
            hashlib.blake2b(key=key[:64], digest_size=8, person=b"tav-ref-%d" % n) for n in range(_ROUNDS)
        ]
        self._copies = tuple(function.copy for function in self._rounds)
        # The references made in the last millisecond, by what they hold: a flood of denials (one
        # client, one token) pays the cipher once per millisecond, not once per 403. The same
        # input gives the same reference anyway (a permutation): nothing new is revealed.
        self._memo: dict[tuple[int, bool, int, str, int], bytes] = {}
        self._memo_ms = -1

    def encode(self, kind: int, unknown: bool, at_ms: int, token_hash: str, tag: int) -> bytes:
        """The reference (ASCII) of a denial; `token_hash`: the token's whole hash, or ""."""
        key = (kind, unknown, at_ms, token_hash, tag)  # the whole hash: no slice per call
        memo = self._memo
        if at_ms == self._memo_ms:
            found = memo.get(key)
            if found is not None:
                return found
            if len(memo) >= _MEMO:
                memo.clear()
        else:
            memo.clear()
            self._memo_ms = at_ms
        memo[key] = found = self._encipher(kind, unknown, at_ms, token_hash, tag)
        return found

    def _encipher(self, kind: int, unknown: bool, at_ms: int, token_hash: str, tag: int) -> bytes:
        # The block as two 64-bit integers, the rounds written out, the copies bound once: a
        # loop over bytes objects cost twice as much Python around the same 4 BLAKE2b calls.
        data = token_hash[:HASH_CHARS].encode("ascii")
        token = int.from_bytes(data if len(data) == HASH_CHARS else data.ljust(HASH_CHARS, b"\0"))
        left = (((VERSION << 4) | (kind << 1) | unknown) << 56) | ((at_ms & _LOW48) << 8) | (token >> 48)
        right = ((token & _LOW48) << 16) | (tag & 0xFFFF)
        first, second, third, fourth = self._copies
        mixed = first()
        mixed.update(right.to_bytes(8))
        left ^= int.from_bytes(mixed.digest())
        mixed = second()
        mixed.update(left.to_bytes(8))
        right ^= int.from_bytes(mixed.digest())
        mixed = third()
        mixed.update(right.to_bytes(8))
        left ^= int.from_bytes(mixed.digest())
        mixed = fourth()
        mixed.update(left.to_bytes(8))
        right ^= int.from_bytes(mixed.digest())
        return b"%016x%016x" % (left, right)

    def refused(self, at_ms: int, why: int) -> bytes:
        """The reference of a request refused before any token check (`REFUSALS`)."""
        return self.encode(REFUSED, False, at_ms, "", why)

    def decode(self, text: str) -> DenialRef | None:
        """What `text` holds, or None when it is no reference enciphered with this key (another
        secret, a typo, a truncated copy). Spaces and dashes are ignored, case does not matter."""
        cleaned = "".join(text.split()).replace("-", "")
        if len(cleaned) != 32 or not _HEX.fullmatch(cleaned):
            return None
        left, right = int(cleaned[:16], 16), int(cleaned[16:], 16)
        # `encode`'s rounds undone, last first.
        for function, into_left in zip(reversed(self._rounds), (False, True, False, True), strict=True):
            mixed = function.copy()
            mixed.update((left if not into_left else right).to_bytes(8, "big"))
            if into_left:
                left ^= int.from_bytes(mixed.digest(), "big")
            else:
                right ^= int.from_bytes(mixed.digest(), "big")
        block = left.to_bytes(8, "big") + right.to_bytes(8, "big")
        head, token = block[0], block[7 : 7 + HASH_CHARS]
        kind, unknown = (head >> 1) & 0b111, bool(head & 1)
        # A reference of another secret deciphers to noise: these checks refuse all but ~1 in
        # 2**17 of them (version, kind, and 7 hash characters or none).
        if head >> 4 != VERSION or kind not in KINDS:
            return None
        if token == _NO_HASH:
            text_token = ""  # no token hash at hand (REFUSED, UNLOGGED)
        elif kind == REFUSED or not set(token) <= _HASH_ALPHABET:
            return None
        else:
            text_token = token.decode("ascii")
        at_ms = int.from_bytes(block[1:7], "big")
        return DenialRef(kind, unknown, at_ms, text_token, int.from_bytes(block[14:], "big"))
