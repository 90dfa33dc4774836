"""The denial writer's packed XADDs are, byte for byte, what hiredis packs for `_xadd`."""

from __future__ import annotations

import hiredis
import pytest

from validator.store.denials import _FINGERPRINT, _Packer, _xadd

FRONT = ("front_end", "app.example.com", "domain_not_listed", "enforce", "https://app.example.com", "00a1")
BACK = ("back_end", "203.0.113.9", "ip_not_listed", "report", "-", "ffff")
UNICODE = ("front_end", "bücher.example", "domain_not_listed", "enforce", "-", "0000")
ENTRIES = [
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
