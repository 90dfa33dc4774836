"""Report-only mode: decided as usual, a would-be denial let through and marked."""

from __future__ import annotations

import pytest

from validator.model import Decision, Mode, Reason, Restrictions, Source, decision, reported
from validator.rules.decide import ReportOnlyRules, TokenRules, compile_rules

pytestmark = [pytest.mark.promise("P-REPORT-ONLY")]

RESTRICTIONS = dict(domain_enabled=True, ip_enabled=True, domains=["app.example.com"], ips=["203.0.113.7"])

REQUESTS = [
    pytest.param(("https://app.example.com", None, False, None), Reason.DOMAIN_LISTED, id="listed domain"),
    pytest.param(("https://evil.test", None, False, None), Reason.DOMAIN_NOT_LISTED, id="other domain"),
    pytest.param(("null", None, False, None), Reason.NO_DOMAIN, id="no domain"),
    pytest.param((None, None, False, "203.0.113.7"), Reason.IP_LISTED, id="listed ip"),
    pytest.param((None, None, False, "198.51.100.1"), Reason.IP_NOT_LISTED, id="other ip"),
    pytest.param((None, None, False, None), Reason.NO_IP, id="no ip"),
]


@pytest.mark.parametrize(("request_args", "reason"), REQUESTS)
def test_report_only_never_denies_and_keeps_the_reason(request_args: tuple, reason: Reason) -> None:  # type: ignore[type-arg]
    enforcing = TokenRules(Restrictions(**RESTRICTIONS))  # type: ignore[arg-type]
    reporting = compile_rules(Restrictions(**RESTRICTIONS, mode=Mode.REPORT))  # type: ignore[arg-type]
    assert isinstance(reporting, ReportOnlyRules)
    enforced = enforcing.decide(*request_args)
    seen = reporting.decide(*request_args)
    assert seen.allowed
    assert seen.reason is enforced.reason is reason
    assert seen.source is enforced.source
    assert seen.reported is (not enforced.allowed)
    assert seen.denied_by_rules is (not enforced.allowed)


def test_enforcing_tokens_get_the_plain_rules() -> None:
    assert type(compile_rules(Restrictions(**RESTRICTIONS))) is TokenRules  # type: ignore[arg-type]


def test_reported_decisions_are_shared_constants() -> None:
    denial = decision(False, Reason.IP_NOT_LISTED, Source.BACK_END)
    assert reported(denial) is reported(denial)
    assert reported(denial) == Decision(True, Reason.IP_NOT_LISTED, Source.BACK_END, reported=True)
