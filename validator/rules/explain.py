"""Why a request gets its decision, in words for a person (`validator-admin check`): pure."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from validator import model
from validator.model import Reason, Restrictions, Source
from validator.rules.decide import TokenRules
from validator.rules.domains import DomainSet
from validator.rules.ips import IPSet, parse_ip
from validator.rules.request import host_of, origin_of


class Explanation(msgspec.Struct, kw_only=True):
    """Why a request made with a token gets its decision, for a person (`validator-admin check`).

    `signal` is the header that made it a front-end request (origin, referer, sec-fetch), None
    for a back-end one; `domain`/`scheme`/`port` or `ip` is what the rule looked at; `matched`
    the list entries that match the request. `classification` and `rule` say it in words.
    """

    allowed: bool
    reason: Reason
    source: Source
    signal: str | None
    domain: str | None
    scheme: str | None
    port: int | None
    ip: str | None
    matched: list[str]
    restrictions: Restrictions | None
    classification: str
    rule: str


_SIGNALS = {
    "origin": "an Origin header",
    "referer": "a Referer header",
    "sec-fetch": "a Sec-Fetch-* header (and no Origin or Referer)",
}


def explain(
    restrictions: Restrictions | None,
    *,
    origin: str | None = None,
    referer: str | None = None,
    sec_fetch: bool = False,
    client_ip: str | None = None,
    unknown_allowed: bool = True,
) -> Explanation:
    """Decide a request against `restrictions` with `TokenRules`, and say why in words. Entries
    that have lapsed by the wall clock are left out, as validators leave them out."""
    if restrictions is not None:
        restrictions = restrictions.active(model.wall_clock())
    decision = TokenRules(restrictions, unknown_allowed=unknown_allowed).decide(
        origin, referer, sec_fetch, client_ip
    )
    r = restrictions or Restrictions()
    signal = domain = scheme = ip = None
    port = None
    matched: list[str] = []
    if decision.source is Source.FRONT_END:
        signal = "origin" if origin else "referer" if referer is not None else "sec-fetch"
        classification = f"front end (browser): the request carries {_SIGNALS[signal]}"
        url = origin or referer
        domain = host_of(url) if url else None
        if url and domain is not None:
            parts = origin_of(url)
            if parts is not None:
                scheme, _, port = parts
            matched = [entry for entry in r.domains if DomainSet([entry]).matches(domain, url)]
    else:
        classification = "back end (server): no Origin, Referer or Sec-Fetch-* header"
        if origin == "":
            classification += " (an empty Origin is no browser signal)"
        if client_ip:
            address = parse_ip(client_ip)
            ip = None if address is None else str(address)
            matched = [entry for entry in r.ips if client_ip in IPSet([entry])]
    header = "Origin" if origin else "Referer"
    return Explanation(
        allowed=decision.allowed,
        reason=decision.reason,
        source=decision.source or Source.BACK_END,
        signal=signal,
        domain=domain,
        scheme=scheme,
        port=port,
        ip=ip,
        matched=matched,
        restrictions=restrictions,
        classification=classification,
        rule=_rule(
            decision.reason,
            allowed=decision.allowed,
            r=r,
            domain=f"{domain} (from the {header} header"
            + ("" if scheme is None else f"; {scheme}, port {port}")
            + ")",
            ip=ip or repr(client_ip),
            matched=matched,
        ),
    )


def _rule(reason: Reason, *, allowed: bool, r: Restrictions, domain: str, ip: str, matched: list[str]) -> str:
    def listing(entries: Sequence[str]) -> str:
        return ", ".join(entries) if entries else "empty"

    match reason:
        case Reason.UNKNOWN_TOKEN if allowed:
            return "no restrictions are stored for this token: unknown tokens are allowed"
        case Reason.UNKNOWN_TOKEN:
            return (
                "no restrictions are stored for this token: validators set to deny unknown tokens refuse it"
            )
        case Reason.UNRESTRICTED:
            return "neither restriction is on: every request is allowed"
        case Reason.DOMAIN_LISTED:
            return f"the domain restriction is on and {domain} matches {listing(matched)}"
        case Reason.DOMAIN_NOT_LISTED:
            return f"the domain restriction is on and {domain} matches nothing in [{listing(r.domains)}]"
        case Reason.NO_DOMAIN:
            return (
                "the domain restriction is on and the request has no domain (no Origin or Referer "
                "with a host), which matches nothing"
            )
        case Reason.FRONT_END_NOT_ALLOWED:
            return "only the IP restriction is on: front-end (browser) requests are denied"
        case Reason.IP_LISTED:
            return f"the IP restriction is on and {ip} matches {listing(matched)}"
        case Reason.IP_NOT_LISTED:
            return f"the IP restriction is on and {ip} matches nothing in [{listing(r.ips)}]"
        case Reason.NO_IP:
            return "the IP restriction is on and the request has no client IP"
        case Reason.BACK_END_NOT_ALLOWED:
            return "only the domain restriction is on: back-end (server) requests are denied"
        case _:
            return str(reason.value)
