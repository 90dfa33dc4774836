"""compile_rules' direct form of plain lists (`_plain_lists`) against the two sets it stands for."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validator.model import Restrictions
from validator.rules.decide import compile_rules
from validator.rules.domains import DomainSet
from validator.rules.ips import IPSet

# Entries near the edges of the direct form: wildcards, ports, schemes, separators, networks,
# IPv6, leading zeros, repeats, empty strings.
_DOMAIN = st.one_of(
    st.sampled_from(
        ["a.example.com", "b.example.com", "*.example.com", "localhost:3000", "https://x.io", ""]
    ),
    st.text(alphabet="ab.*:/\n\t1-", max_size=12),
)
_IP = st.one_of(
    st.sampled_from(
        ["10.0.0.1", "10.0.0.2", "010.0.0.1", "10.0.0.0/8", "10.0.0.1/32", "::1", "::ffff:1.2.3.4", ""]
    ),
    st.text(alphabet="0123456789./:\t\n", max_size=16),
)


@pytest.mark.timeout(60)
@settings(max_examples=400, deadline=None)
@given(domains=st.lists(_DOMAIN, max_size=6), ips=st.lists(_IP, max_size=6))
def test_the_direct_form_is_what_the_sets_make(domains: list[str], ips: list[str]) -> None:
    try:
        expected_domains, expected_ips = DomainSet(domains), IPSet(ips)
    except ValueError:
        with pytest.raises(ValueError):
            compile_rules(Restrictions(domain_enabled=True, ip_enabled=True, domains=domains, ips=ips))
        return
    rules = compile_rules(Restrictions(domain_enabled=True, ip_enabled=True, domains=domains, ips=ips))
    assert rules.lists == expected_domains.exact + expected_ips.exact
    assert (rules.domain_set is not None) == expected_domains.more
    assert (rules.ip_set is not None) == expected_ips.networks


@pytest.mark.timeout(10)
def test_plain_lists_need_no_sets() -> None:
    rules = compile_rules(
        Restrictions(domain_enabled=True, ip_enabled=True, domains=["a.example.com"], ips=["10.0.0.1"])
    )
    assert rules.lists == "\na.example.com\n\t10.0.0.1\t"
    assert rules.domain_set is None and rules.ip_set is None
