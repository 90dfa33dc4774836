"""The denial writer's packed XADDs are, byte for byte, what hiredis packs for `_xadd`."""

from __future__ import annotations

import hiredis
import pytest

from validator.store.denial_streams import (
    _FINGERPRINT,
    SUMMARY_PAIRS,
    DenialEntry,
    _Packer,
    _summary_args,
    _summary_pairs,
    _SummaryPacker,
    _xadd,
)

FRONT = (
    "front_end",
    "app.example.com",
    "domain_not_listed",
    "enforce",
    "https://app.example.com",
    "00a1",
    "198.51.100.1",
)
BACK = ("back_end", "203.0.113.9", "ip_not_listed", "report", "-", "ffff", "203.0.113.9")
UNICODE = ("front_end", "bücher.example", "domain_not_listed", "enforce", "-", "0000", "-")
ENTRIES: list[DenialEntry] = [
    ("tokhash" + "A" * 20, 1796112000.123, 1, 1796112000.123, FRONT),
    ("tokhash" + "B" * 20, 1796112001.5, 3, 1796112000.0, BACK),  # a merged entry
    ("tokhash" + "C" * 20, 1796112002.0, 1, 1796112002.0, UNICODE),
]


@pytest.mark.parametrize("named", [False, True], ids=["token stream", "unknown-token log"])
def test_packed_commands_are_what_hiredis_packs(named: bool) -> None:
    key = "tav:denials:{abc}"
    out: list[bytes] = []
    commands = _Packer(pexpire_ms=604_800_000).pack(out, key, ("abc", 1000, named, list(ENTRIES)))
    expected = [
        # hiredis's stub types the command as a 1-tuple.
        hiredis.pack_command(_xadd(key, 1000, entry, entry[0][:_FINGERPRINT] if named else None))  # type: ignore[arg-type]
        for entry in ENTRIES
    ]
    expected.append(hiredis.pack_command(("PEXPIRE", key, 604_800_000)))  # type: ignore[arg-type]
    assert commands == len(ENTRIES) + 1
    assert out == expected


def _spray(n: int) -> DenialEntry:
    host = f"x{n}.example.net"
    description = ("front_end", host, "domain_not_listed", "report", f"https://{host}", "0001", "192.0.2.66")
    return (f"h{n}", 1796112003.0, 1, 1796112003.0, description)


@pytest.mark.parametrize("sprayed", [0, 5, SUMMARY_PAIRS + 10], ids=["no spray", "a few", "over the cap"])
@pytest.mark.parametrize("legitimate", [1, 3], ids=["one entry", "three"])
def test_packed_summary_calls_are_what_hiredis_packs(legitimate: int, sprayed: int) -> None:
    """The summary's EVALSHA (`_SummaryPacker`) is what hiredis packs for `_summary_args`; over
    the cap, the batch's pairs are cut fairly: every other client's kept, the sprayer's counted."""
    entries: list[DenialEntry] = [*ENTRIES[:legitimate], *(_spray(n) for n in range(sprayed))]
    pairs, left = _summary_pairs(entries, SUMMARY_PAIRS)
    packed = _SummaryPacker("f" * 40, 604_800_000).pack("tav-denials:{abc}:summary", pairs, left)
    args = _summary_args(pairs, left, 604_800_000)
    assert packed == hiredis.pack_command(("EVALSHA", "f" * 40, 1, "tav-denials:{abc}:summary", *args))  # type: ignore[arg-type]
    assert len(pairs) == min(SUMMARY_PAIRS, legitimate + sprayed)
    assert {d[6] for d, *_ in pairs} >= {e[4][6] for e in ENTRIES[:legitimate]}
    assert left == ({"192.0.2.66": legitimate + sprayed - SUMMARY_PAIRS} if sprayed > SUMMARY_PAIRS else {})
