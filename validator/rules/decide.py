"""Pure decision logic of docs/behaviour.md: classify a request, then apply the decision table."""

from __future__ import annotations

from validator.model import Decision, Mode, Reason, Restrictions, Source, decision, reported
from validator.rules.domains import DomainSet
from validator.rules.ips import IPSet
from validator.rules.request import request_host

__all__ = ["ReportOnlyRules", "TokenRules", "classify", "compile_rules"]

_FRONT = Source.FRONT_END
_BACK = Source.BACK_END

_UNRESTRICTED = {s: decision(True, Reason.UNRESTRICTED, s) for s in Source}
_DOMAIN_LISTED = decision(True, Reason.DOMAIN_LISTED, _FRONT)
_DOMAIN_NOT_LISTED = decision(False, Reason.DOMAIN_NOT_LISTED, _FRONT)
_NO_DOMAIN = decision(False, Reason.NO_DOMAIN, _FRONT)
_FRONT_END_NOT_ALLOWED = decision(False, Reason.FRONT_END_NOT_ALLOWED, _FRONT)
_IP_LISTED = decision(True, Reason.IP_LISTED, _BACK)
_IP_NOT_LISTED = decision(False, Reason.IP_NOT_LISTED, _BACK)
_NO_IP = decision(False, Reason.NO_IP, _BACK)
_BACK_END_NOT_ALLOWED = decision(False, Reason.BACK_END_NOT_ALLOWED, _BACK)
_UNKNOWN = {
    allowed: {s: decision(allowed, Reason.UNKNOWN_TOKEN, s) for s in Source} for allowed in (True, False)
}


def classify(origin: str | None, referer: str | None, sec_fetch: bool) -> Source:
    """Front end if the request carries a browser signal: a non-empty `Origin`, a `Referer`
    (even an empty one), or any `Sec-Fetch-*` header; back end otherwise."""
    return _FRONT if origin or referer is not None or sec_fetch else _BACK


class TokenRules:
    """One token's restrictions compiled for the hot path; `decide()` is the decision table."""

    __slots__ = ("_unknown", "domain_enabled", "domains", "ip_enabled", "ips", "known")

    def __init__(
        self,
        restrictions: Restrictions | None,
        *,
        unknown_allowed: bool = True,
    ) -> None:
        self.known = restrictions is not None
        self._unknown = _UNKNOWN[unknown_allowed]
        r = restrictions if restrictions is not None else Restrictions()
        self.domain_enabled = r.domain_enabled
        self.ip_enabled = r.ip_enabled
        self.domains = DomainSet(r.domains)
        self.ips = IPSet(r.ips)

    def decide(
        self,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
    ) -> Decision:
        """Apply docs/behaviour.md's decision table to one request. Never raises."""
        # classify(), inlined: this method is the hot path (benchmarks: hotpath).
        front_end = origin or referer is not None or sec_fetch
        if not self.known:
            return self._unknown[_FRONT if front_end else _BACK]
        if front_end:
            if not self.domain_enabled:
                # D off: allowed only when nothing is enabled; "only IP enabled" denies browsers.
                return _FRONT_END_NOT_ALLOWED if self.ip_enabled else _UNRESTRICTED[_FRONT]
            url = origin or referer  # SPEC: the host of Origin if present, else of Referer
            if not url or (host := request_host(url)) is None:
                return _NO_DOMAIN
            domains = self.domains
            # Bare entries answer with one set look-up; only a list holding a scheme- or
            # port-qualified entry pays for parsing the request's scheme and port.
            if host in domains or (domains.qualified and domains.matches(host, url)):
                return _DOMAIN_LISTED
            return _DOMAIN_NOT_LISTED
        if not self.ip_enabled:
            return _BACK_END_NOT_ALLOWED if self.domain_enabled else _UNRESTRICTED[_BACK]
        if not client_ip:
            return _NO_IP
        return _IP_LISTED if client_ip in self.ips else _IP_NOT_LISTED


class ReportOnlyRules(TokenRules):
    """A token in report-only mode: a would-be denial is let through, marked `reported`."""

    __slots__ = ()

    def decide(
        self,
        origin: str | None,
        referer: str | None,
        sec_fetch: bool,
        client_ip: str | None,
    ) -> Decision:
        result = super().decide(origin, referer, sec_fetch, client_ip)
        return result if result.allowed else reported(result)


def compile_rules(restrictions: Restrictions) -> TokenRules:
    """The hot-path form of a stored record (a subclass only for report-only tokens, so that
    enforcing ones pay nothing for the mode)."""
    if restrictions.mode is Mode.REPORT:
        return ReportOnlyRules(restrictions)
    return TokenRules(restrictions)
