"""The cluster layout the invalidation listener follows: CLUSTER SLOTS plus slotless primaries."""

from __future__ import annotations

from validator.store.cluster import parse_slots, with_slotless_primaries

NODES = """\
381b 127.0.0.1:7001@17001 master - 0 1 3 connected 10923-16383
1df8 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-0ef6]
0ef6 127.0.0.1:7002@17002,host-b master - 0 1 2 connected 5461-10922
75f2 127.0.0.1:7003@17003 master - 0 1 5 connected
16ad 127.0.0.1:7004@17004 slave 1df8 0 1 6 connected
7955 127.0.0.1:7005@17005 master,fail - 0 1 4 disconnected
9999 127.0.0.1:7006@17006 master - 0 1 7 disconnected
"""

SLOTS = [
    [0, 5460, ["127.0.0.1", 7000, "1df8"]],
    [5461, 10922, ["", 7002, "0ef6"]],
    [10923, 16383, ["127.0.0.1", 7001, "381b"]],
]


def test_a_primary_serving_no_slot_is_listened_to_with_no_ranges() -> None:
    layout = with_slotless_primaries(parse_slots(SLOTS, "127.0.0.1"), NODES)
    assert layout == {
        "127.0.0.1:7000": ((0, 5460),),
        "127.0.0.1:7001": ((10923, 16383),),
        "127.0.0.1:7002": ((5461, 10922),),
        # A new primary (importing its first slot); not replicas, failed or disconnected nodes.
        "127.0.0.1:7003": (),
    }


def test_nothing_is_added_when_every_primary_serves_slots() -> None:
    layout = parse_slots(SLOTS, "127.0.0.1")
    assert with_slotless_primaries(layout, "\n".join(NODES.splitlines()[:3])) == layout
