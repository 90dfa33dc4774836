"""A miss's fast form of the common record (`common_record` + `plain_rules`) against the full
parse and compile (`parse_read` + `compile_rules`): whatever it accepts reads the same, and
whatever it refuses is left to the full path (which may refuse it too)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validator.rules.decide import ReportOnlyRules, TokenRules, compile_rules, plain_rules
from validator.store import UnreadableRecord, common_record, parse_read

_TEXT = st.text(alphabet="abdirvx01:.*-\t\n\u00e9", max_size=8)
# Meta items near the edges: the fields of the common record, a mode, an expiry, odd values.
_META_ITEM = st.one_of(
    st.sampled_from(["d", "i", "v", "r", "0", "1", "7", "report", "enforce", "x:d:a.io", "1700000000000"]),
    _TEXT,
    st.sampled_from([b"1", 1, None, ["1"]]),
)
_DOMAIN = st.one_of(
    st.sampled_from(["a.example.com", "b.example.com", "*.example.com", "localhost:3000", "", "\u00e9.io"]),
    _TEXT,
    st.sampled_from([b"a.io", 3]),
)
_IP = st.one_of(
    st.sampled_from(["10.0.0.1", "10.0.0.2", "010.0.0.1", "10.0.0.0/8", "::1", "", "1.2.3.4\t"]),
    st.text(alphabet="0123456789./:\t\n", max_size=16),
    st.sampled_from([b"10.0.0.1", None]),
)
_COMMON = st.fixed_dictionaries(
    {"d": st.sampled_from(["0", "1"]), "i": st.sampled_from(["0", "1"]), "v": st.sampled_from(["1", "42"])},
    optional={"r": st.sampled_from(["enforce", "report"])},
)


def _flat(fields: dict[str, Any]) -> list[Any]:
    return [item for pair in fields.items() for item in pair]


def _full(reply: Any) -> TokenRules | Exception:
    try:
        restrictions = parse_read(reply)
        assert restrictions is not None
        return compile_rules(restrictions)
    except (UnreadableRecord, ValueError) as error:
        return error


def _fast(reply: Any) -> TokenRules | None:
    common = common_record(reply)
    return None if common is None else plain_rules(*common)


def _same(fast: TokenRules, full: TokenRules | Exception) -> None:
    assert isinstance(full, TokenRules), full
    assert type(fast) is type(full)
    assert (fast.front, fast.back, fast.domain_set, fast.ip_set) == (full.front, full.back, None, None)
    assert full.domain_set is None and full.ip_set is None
    # The same entries; the fast form keeps the reply's order, the full one sorts.
    assert sorted(fast.lists.replace("\t", "\n").split("\n")) == sorted(
        full.lists.replace("\t", "\n").split("\n")
    )


@pytest.mark.timeout(60)
@settings(max_examples=400, deadline=None)
@given(fields=_COMMON, domains=st.lists(_DOMAIN, max_size=6), ips=st.lists(_IP, max_size=6))
def test_a_common_meta_reads_as_the_full_path_reads_it(
    fields: dict[str, str], domains: list[Any], ips: list[Any]
) -> None:
    reply = [_flat(fields), domains, ips]
    fast = _fast(reply)
    if fast is not None:
        _same(fast, _full(reply))


@pytest.mark.timeout(60)
@settings(max_examples=600, deadline=None)
@given(
    meta=st.one_of(st.lists(_META_ITEM, max_size=10), st.sampled_from([None, "d", ["d", "1"], b"x"])),
    domains=st.one_of(st.lists(_DOMAIN, max_size=4), st.sampled_from([None, "a.io", {"a.io"}])),
    ips=st.lists(_IP, max_size=4),
)
def test_any_reply_the_fast_form_accepts_reads_the_same_in_full(meta: Any, domains: Any, ips: Any) -> None:
    reply = [meta, domains, ips]
    fast = _fast(reply)
    if fast is not None:
        _same(fast, _full(reply))


@pytest.mark.parametrize("order", ["dia", "vid"])
@pytest.mark.parametrize("mode", [None, "enforce", "report"])
def test_the_common_record_takes_the_fast_form(mode: str | None, order: str) -> None:
    # As `write.lua` writes the fields (d, i, v, then r), and in another order.
    meta = (["d", "1", "i", "1", "v", "3"] if order == "dia" else ["v", "3", "i", "1", "d", "1"]) + (
        ["r", mode] if mode else []
    )
    reply = [meta, ["b.example.com", "a.example.com"], ["11.0.0.2", "11.0.0.1"]]
    fast = _fast(reply)
    assert fast is not None
    assert type(fast) is (ReportOnlyRules if mode == "report" else TokenRules)
    _same(fast, _full(reply))


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [[], [], []],  # an unknown token
        [["d", "1", "i", "1", "v", "3", "x:d:a.io", "1700000000000"], ["a.io"], []],  # an expiry
        [["d", "1", "i", "1", "v", "3", "r", "shadow"], ["a.io"], []],
        [["d", "yes", "i", "1", "v", "3"], ["a.io"], []],
        [["d", "1", "i", "1", "v", "\u0663"], ["a.io"], []],  # a digit, not ASCII
        [["d", "1", "i", "1", "v", "3"], ["\u00e9.io"], []],
        [["d", "1", "i", "1", "v", "3"], ["*.a.io"], []],
        [["d", "1", "i", "1", "v", "3"], [], ["10.0.0.0/8"]],
        [["d", "1", "i", "1", "v", "3"], [], ["010.0.0.1"]],
        [["d", "1", "i", "1", "v", "3"], [b"a.io"], []],
        [["d", "1", "i", "1", "v"], [], []],
        [["d", "1", "i", "2", "v", "3"], [], []],
        [["d", "1", "i", "1", "v", ["3"]], [], []],
        [["d", ["1"], "i", "1", "v", "3"], [], []],
        [["d", "1", "d", "1", "v", "3"], [], []],
    ],
)
def test_anything_else_is_left_to_the_full_path(reply: Any) -> None:
    assert _fast(reply) is None
