"""The pure rules of docs/behaviour.md, with no I/O: classify a request, decide it against a token's
restrictions (`decide`), parse its `Origin`/`Referer` (`request`), match hosts (`domains`) and
addresses (`ips`), normalise what an admin stores (`entries`, `networks`), explain a decision
(`explain`)."""

from __future__ import annotations

from validator.rules.decide import ReportOnlyRules, TokenRules, classify, compile_rules
from validator.rules.domains import DomainSet
from validator.rules.entries import Normalized, normalize_domain
from validator.rules.ips import IPSet, parse_ip
from validator.rules.networks import normalize_ip
from validator.rules.request import host_of, origin_of

__all__ = [
    "DomainSet",
    "IPSet",
    "Normalized",
    "ReportOnlyRules",
    "TokenRules",
    "classify",
    "compile_rules",
    "host_of",
    "normalize_domain",
    "normalize_ip",
    "origin_of",
    "parse_ip",
]
