"""The Redis layout of docs/behaviour.md: key names, the token's fingerprint, the Lua scripts, and the
records as `lua/read.lua` returns them (strictly parsed: `UnreadableRecord`).

Per token, under one hash tag (so one Redis Cluster slot, one round trip):

    {prefix}{<h>}:m   HASH  d, i = switches ("0"/"1"), v = version (grows with every change),
                            r = mode ("report"; absent: enforce), x:d:<entry> / x:i:<entry> =
                            the instant (ms since the epoch) a domain / IP entry stops matching
    {prefix}{<h>}:d   SET   normalised domain entries
    {prefix}{<h>}:i   SET   normalised IP entries

`<h>` is a keyed hash (HMAC-SHA256, truncated to 128 bits, base64url) of the token, so neither
keys nor values hold a token in clear.
"""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any, Literal, NamedTuple

from redis.exceptions import RedisError

from validator.errors import StoreUnavailable
from validator.model import Mode, RestrictionKind, Restrictions

DEFAULT_KEY_PREFIX = "tav:"

# Redis Cluster's hash slots.
SLOTS = 16384

List = Literal["d", "i"]
# A restriction's kind (`validator.model.RestrictionKind`), and the list code the write script
# knows it by.
Kind = RestrictionKind
_LIST_CODES: dict[Kind, List] = {"domain": "d", "ip": "i"}
# The changes to one list the write script knows.
ListChange = Literal["add", "remove", "set"]
_LIST_NAMES: dict[str, str] = {"d": "domain", "i": "IP"}


class Expiry(NamedTuple):
    """When added or set entries stop matching: at an instant (`at_ms`, ms since the epoch) or
    after a duration from the store's clock now (`in_ms`); one of the two."""

    at_ms: int | None = None
    in_ms: int | None = None

    def options(self) -> dict[str, str]:
        """The write script's options for this expiry (`lua/write.lua`)."""
        if self.in_ms is not None:
            return {"expires_in": str(self.in_ms)}
        return {"expires_at": str(self.at_ms)}


@dataclasses.dataclass(frozen=True)
class KeyLayout:
    """The key names under one `prefix`: a token's record and history, and SCAN patterns."""

    prefix: str

    def record(self, token_hash: str) -> tuple[str, str, str]:
        """The meta, domain and IP keys of one token, sharing the hash tag `{token_hash}`."""
        base = f"{self.prefix}{{{token_hash}}}:"
        return base + "m", base + "d", base + "i"

    def history(self, token_hash: str) -> str:
        """The token's capped change history: a list of JSON entries, newest first (`lua/write.lua`)."""
        return f"{self.prefix}{{{token_hash}}}:h"

    def hash_of_key(self, key: str) -> str | None:
        """The token hash inside one of our keys (as named by an invalidation message)."""
        if not key.startswith(self.prefix):
            return None
        start = len(self.prefix)
        end = key.find("}", start)
        if key[start : start + 1] != "{" or end == -1:
            return None
        return key[start + 1 : end]

    def scan_pattern(self, suffix: str) -> str:
        """The SCAN pattern of every token's key ending in `:suffix` (the prefix escaped)."""
        prefix = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
        return f"{prefix}{{*}}:{suffix}"


def _script(name: str) -> str:
    return resources.files("validator.store").joinpath("lua", name).read_text(encoding="utf-8")


def fingerprint(token_hash: str) -> str:
    """A short, non-reversible name of a token for logs and CLI output."""
    return token_hash[:10]


def slot_of(tag: str) -> int:
    """The Redis Cluster slot of the keys whose hash tag is `tag` (a token's: its hash):
    CRC16-XMODEM of the tag, modulo 16384."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        raise StoreUnavailable(f"restriction store unavailable: {error}") from error
    except UnicodeDecodeError as error:
        # Bytes that are not UTF-8, written by hand: nothing safe can be read from them.
        raise StoreUnavailable(f"unreadable reply from the restriction store: {error}") from error
    except RuntimeError as error:
        # A connection closed under a command: uvloop's transports raise "unable to perform
        # operation on <TCPTransport closed=True>" where asyncio's ignore the write.
        raise StoreUnavailable(f"restriction store unavailable: {error}") from error
    except AttributeError as error:
        # redis-py's asyncio RedisCluster closes every connection when it refreshes its slot map
        # (after a few MOVED, on CLUSTERDOWN), also those that other requests are using; these
        # then fail with "'NoneType' object has no attribute ..." (redis-py 8.1). It is the store
        # failing, not us: fail closed like any other store error.
        raise StoreUnavailable(f"restriction store unavailable: {error!r}") from error


class UnreadableRecord(StoreUnavailable):
    """A token's stored record cannot be understood (edited by hand, a key of another type): the
    store answered, but nothing safe can be decided from the record, so checks of that token
    fail closed like any store failure."""

    def __init__(self, reason: str, token_hash: str | None = None) -> None:
        record = "record" if token_hash is None else f"record of token {fingerprint(token_hash)}"
        super().__init__(
            f"unreadable {record} in the restriction store ({reason}): "
            "fix it, or delete the token and store it again"
        )
        self.reason = reason
        self.token_hash = token_hash


_SWITCHES = {"0": False, "1": True}
_MODES = {mode.value: mode for mode in Mode}
_META_FIELDS = frozenset(("d", "i", "v", "r"))
# The meta hash's field holding an entry's expiry is this prefix + the entry (`lua/write.lua`).
EXPIRY_FIELD: dict[str, str] = {"d": "x:d:", "i": "x:i:"}
_ENFORCE = Mode.ENFORCE.value


def wrong_type(error: BaseException) -> bool:
    """Whether `error`, or the error it was raised from, is Redis's WRONGTYPE reply: one of the
    token's keys holds another type than `lua/read.lua` expects (an unreadable record)."""
    return any(str(cause).startswith("WRONGTYPE") for cause in (error, error.__cause__) if cause is not None)


def parse_read(reply: Any) -> Restrictions | None:
    """Restrictions from the reply of a read (None: the token is unknown): of `lua/read.lua`
    (None for an unknown token) or of the read transaction (`Store._read_transaction`: an empty
    meta hash for an unknown token, whatever else is there, as the script reads it).

    Raises `UnreadableRecord` for a reply that is not a record as `lua/write.lua` writes it.
    """
    if reply is None:
        return None
    if not isinstance(reply, list) or len(reply) != 3:
        raise UnreadableRecord(f"unexpected reply {reply!r:.80}")
    meta, domains, ips = reply
    if meta == []:
        return None
    return _restrictions(meta, domains, ips)


# The fields of a common record's meta hash: switches and version, and the mode if not enforce.
_COMMON_META = frozenset(("d", "i", "v"))


def common_record(reply: Any) -> tuple[bool, bool, bool, list[Any], list[Any]] | None:
    """The switches, whether the mode is report, and the domain and IP lists of a read's reply
    when it is the common record: a meta hash of the two switches, the version and at most the
    mode, no expiring entry; None for anything else, `parse_read` decides then. What it accepts,
    `parse_read` accepts and reads the same; the lists are as stored, not checked (the caller
    compiles them in the same pass: `validator.rules.decide.plain_rules`).

    Every miss reads one record: this is `parse_read`'s work for the record most tokens have,
    without the `Restrictions` in between (benchmarks: miss)."""
    if reply.__class__ is not list or len(reply) != 3:
        return None
    meta, domains, ips = reply
    if meta.__class__ is not list or domains.__class__ is not list or ips.__class__ is not list:
        return None
    if len(meta) == 6 and meta[0] == "d" and meta[2] == "i" and meta[4] == "v":
        # The order `write.lua` writes them in, which a small hash keeps: no dict to build.
        domain_switch, ip_switch, version, mode = meta[1], meta[3], meta[5], _ENFORCE
    else:
        try:
            fields = dict(zip(meta[::2], meta[1::2], strict=False))  # odd: the length check below
        except TypeError:  # an item that is not text (a nested list): parse_read says what
            return None
        if len(fields) * 2 != len(meta):
            return None
        mode = fields.pop("r", _ENFORCE) if len(fields) == 4 else _ENFORCE
        if fields.keys() != _COMMON_META:
            return None
        domain_switch, ip_switch, version = fields["d"], fields["i"], fields["v"]
    try:
        domain_enabled = _SWITCHES.get(domain_switch)
        ip_enabled = _SWITCHES.get(ip_switch)
    except TypeError:  # a value that is not text (a nested list)
        return None
    if mode != _ENFORCE and mode != "report":  # noqa: PLR1714
        return None
    if (
        domain_enabled is None
        or ip_enabled is None
        or version.__class__ is not str
        or not version.isascii()
        or not version.isdigit()
    ):
        return None
    return domain_enabled, ip_enabled, mode != _ENFORCE, domains, ips


def _texts(part: object) -> bool:
    # Everything `write.lua` stores is ASCII (domains in IDNA form): anything else was not
    # written by an admin command. Joined, because `str.join` refuses anything but text (bytes,
    # a nested list, an error reply) in one C call: a third of the time of a check per item.
    if not isinstance(part, (list, tuple)):
        return False
    try:
        return "".join(part).isascii()
    except TypeError:
        return False


def _restrictions(meta: Sequence[str], domains: Sequence[str], ips: Sequence[str]) -> Restrictions:
    # Strict on purpose: a record edited by hand into something `write.lua` never writes (a switch
    # "yes", an unknown mode) could otherwise read as *less* restricted than its owner meant.
    # Every miss parses one record: the checks below are written for the common record (set
    # lookups, one dict): 2.2 us instead of 3.1 us for a field loop.
    if not (_texts(meta) and _texts(domains) and _texts(ips)):
        raise UnreadableRecord("its keys do not hold a hash and two sets of ASCII text")
    if not meta:
        return Restrictions(domains=sorted(domains), ips=sorted(ips))
    if len(meta) % 2:
        raise UnreadableRecord("its hash came back with an odd number of items")
    fields = dict(zip(meta[::2], meta[1::2], strict=True))
    domain_expiry: dict[str, int] = {}
    ip_expiry: dict[str, int] = {}
    if not _META_FIELDS.issuperset(fields):
        # Only a record with expiring entries pays for this.
        domain_expiry, ip_expiry = _expiries(fields, domains, ips)
    domain_enabled = _SWITCHES.get(fields.get("d", ""))
    ip_enabled = _SWITCHES.get(fields.get("i", ""))
    if domain_enabled is None or ip_enabled is None:
        switch, name = ("d", "domain") if domain_enabled is None else ("i", "IP")
        raise UnreadableRecord(f"{name} switch {fields.get(switch)!r} is not '0' or '1'")
    version = fields.get("v", "")
    if not version.isascii() or not version.isdigit():
        raise UnreadableRecord(f"version {version!r} is not a number")
    mode = _MODES.get(fields.get("r", _ENFORCE))
    if mode is None:
        raise UnreadableRecord(f"mode {fields['r']!r} is not 'enforce' or 'report'")
    return Restrictions(
        domain_enabled=domain_enabled,
        ip_enabled=ip_enabled,
        domains=sorted(domains),
        ips=sorted(ips),
        version=int(version),
        mode=mode,
        domain_expiry=domain_expiry,
        ip_expiry=ip_expiry,
    )


# An instant in ms since the epoch: up to 15 digits (year 33658), no sign, no leading zero.
_MAX_EXPIRY_DIGITS = 15


def _expiries(
    fields: dict[str, str], domains: Sequence[str], ips: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """The expiry fields of a meta hash (`x:d:<entry>`, `x:i:<entry>` = ms since the epoch), by
    list; removes them from `fields`. Raises `UnreadableRecord` for any other unknown field or an
    instant that is not a number: an entry whose expiry cannot be read must not read as permanent.
    A field for an entry not in its set is ignored (it makes nothing match); `write.lua` never
    leaves one behind."""
    expiry: dict[str, dict[str, int]] = {EXPIRY_FIELD["d"]: {}, EXPIRY_FIELD["i"]: {}}
    members = {EXPIRY_FIELD["d"]: set(domains), EXPIRY_FIELD["i"]: set(ips)}
    unknown = []
    for name in [name for name in fields if name not in _META_FIELDS]:
        prefix, entry = name[:4], name[4:]
        if prefix not in expiry or not entry:
            unknown.append(name)
            continue
        value = fields.pop(name)
        if not (value.isascii() and value.isdigit() and len(value) <= _MAX_EXPIRY_DIGITS) or value[0] == "0":
            raise UnreadableRecord(f"expiry {value!r} of entry {entry!r} is not an instant in milliseconds")
        if entry in members[prefix]:
            expiry[prefix][entry] = int(value)
    if unknown:
        raise UnreadableRecord(f"unknown field(s) {', '.join(map(repr, sorted(unknown)))}")
    return expiry[EXPIRY_FIELD["d"]], expiry[EXPIRY_FIELD["i"]]


def put_options(record: Restrictions) -> dict[str, Any]:
    """The write script's options for a put: the expiries of the record's entries."""
    if not (record.domain_expiry or record.ip_expiry):
        return {}
    return {
        "expiry": {
            "d": {entry: str(at) for entry, at in record.domain_expiry.items()},
            "i": {entry: str(at) for entry, at in record.ip_expiry.items()},
        }
    }


def put_args(record: Restrictions) -> tuple[str, ...]:
    """The write script's op and arguments that store a whole record (see `lua/write.lua`)."""
    return (
        "put",
        "1" if record.domain_enabled else "0",
        "1" if record.ip_enabled else "0",
        record.mode.value,
        str(len(record.domains)),
        *record.domains,
        *record.ips,
    )
