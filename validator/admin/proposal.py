"""Learn, then enforce: an allowlist proposed from what a token's denial log holds (pure, no I/O).

`propose` turns the entries of a token's denial stream (its would-be denials in report-only mode
and its denials, from every validator process) into a `Suggestion`: each domain and address seen,
with its traffic and what the admin-side rules make of it, and the lists those rules allow within
the limit, ranked by traffic. `Admin.suggest` reads the stream; `Admin.apply_suggestion` writes
`Suggestion.record`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import msgspec

from validator.errors import InvalidEntry
from validator.model import Mode, Restrictions
from validator.rules.domains import DomainSet
from validator.rules.entries import Normalized, normalize_domain, public_suffixes
from validator.rules.ips import IPSet

__all__ = ["Flood", "ListProposal", "Observation", "Suggestion", "Wildcard", "propose"]

Kind = Literal["domain", "ip", "other"]
Status = Literal["listed", "proposed", "refused", "over_limit"]

NO_DOMAIN = "no domain could be read (Origin null or malformed, or only Sec-Fetch-*): no entry can allow it"
NO_IP = "no client address was recorded: no entry can allow it"
NO_SOURCE = "recorded as neither a front-end nor a back-end request: no entry can allow it"
# A client address that sent more distinct domains and addresses than this (in the token's
# summary, those it let go included) is taken for a flood: what only such clients sent is shown,
# never proposed. A browser or server uses a token on a few sites: a list holds at most 5 by default.
FLOOD_VALUES = 20
FLOODED = (
    "seen only from a client that sent {values:,} distinct values (a flood?): not proposed; "
    "add it by hand if it is yours"
)
_KINDS: dict[str, Kind] = {"front_end": "domain", "back_end": "ip"}


class Observation(msgspec.Struct, kw_only=True):
    """One domain or address seen in the token's denials, and what the proposal makes of it.

    `count` is how many requests (a merged entry of the log counts for its repeats); `entry` the
    list entry that allows it (`listed`: stored already; `proposed`), or would (`over_limit`:
    ranked below the limit); None when `refused` (`why` says why: a private address, a public
    suffix, no domain at all ...).
    """

    kind: Kind
    seen: str
    count: int
    first_ms: int
    last_ms: int
    status: Status
    entry: str | None = None
    why: str = ""
    # Distinct client addresses that sent it (what no client address was recorded for counts
    # as one), and their weight: each client weighs 1 in all, shared among the distinct values
    # it sent, so one client spraying many values weighs as one client. Ranked by it first.
    clients: int = 1
    weight: float = 1.0


class Flood(msgspec.Struct, kw_only=True):
    """A client address that sent more than FLOOD_VALUES distinct values: `values` (those the
    summary let go included), `requests` of them kept; what only such clients sent is refused."""

    client: str
    values: int
    requests: int


class Wildcard(msgspec.Struct, kw_only=True):
    """A wildcard considered because more hosts were seen than the list has room for: proposed
    in place of `hosts` (subdomains of one registrable domain), or refused (`why`: over a
    public suffix, where anyone can register a site)."""

    entry: str
    hosts: list[str]
    proposed: bool
    why: str


class ListProposal(msgspec.Struct, kw_only=True):
    """One list as proposed: what is stored is kept, `added` (by traffic) fills the room left.

    `observed` requests of this kind were recorded; `still_denied` of them the proposed list
    would not allow (once enforced); `share_denied` is their ratio (0 when none was observed).
    """

    stored: list[str]
    entries: list[str]
    added: list[str]
    enabled: bool
    observed: int
    still_denied: int
    share_denied: float


class Suggestion(msgspec.Struct, kw_only=True):
    """An allowlist proposed from a token's recorded denials (`propose`)."""

    limit: int
    stored: Restrictions | None
    domains: ListProposal
    ips: ListProposal
    observations: list[Observation]
    wildcards: list[Wildcard]
    entries_read: int
    denials: int
    still_denied: int
    share_denied: float
    allow_private: bool = False
    oldest_ms: int | None = None
    newest_ms: int | None = None
    # Learnt from the token's summary (per client and value, what the capped stream trimmed
    # included) rather than the stream alone; the clients that look like a flood.
    summary: bool = False
    floods: list[Flood] = msgspec.field(default_factory=list)

    @property
    def report_only(self) -> bool:
        return self.stored is not None and self.stored.mode is Mode.REPORT

    def record(self, *, enforce: bool = False) -> Restrictions:
        """The record the proposal writes: the stored one with the proposed lists; `enforce` also
        switches on each restriction whose list allows some of the traffic seen (one already on
        stays on, none is switched off) and sets enforce mode."""
        stored = self.stored or Restrictions()
        domain_on, ip_on = stored.domain_enabled, stored.ip_enabled
        if enforce:
            allowed = {o.kind for o in self.observations if o.status in ("listed", "proposed")}
            domain_on = domain_on or "domain" in allowed
            ip_on = ip_on or "ip" in allowed
        return Restrictions(
            domain_enabled=domain_on,
            ip_enabled=ip_on,
            domains=list(self.domains.entries),
            ips=list(self.ips.entries),
            version=stored.version,
            mode=Mode.ENFORCE if enforce else stored.mode,
            # A stored entry that expires keeps its expiry when the proposal keeps it.
            domain_expiry={e: at for e, at in stored.domain_expiry.items() if e in self.domains.entries},
            ip_expiry={e: at for e, at in stored.ip_expiry.items() if e in self.ips.entries},
        )


class _Seen:
    """The traffic of one domain or address, summed over the log's entries."""

    __slots__ = ("clients", "count", "first", "last", "origins", "weight")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0
        self.last = 0
        self.origins: dict[str, int] = {}  # front end: scheme://host:port as recorded -> requests
        self.clients: dict[str, int] = {}  # client address ("-": none recorded) -> requests
        self.weight = 0.0  # see `Observation.weight` (`_weigh`)

    def add(self, count: int, first: int, last: int, origin: str, client: str) -> None:
        self.first = first if not self.count else min(self.first, first)
        self.last = max(self.last, last)
        self.count += count
        self.origins[origin] = self.origins.get(origin, 0) + count
        self.clients[client] = self.clients.get(client, 0) + count


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _gather(denials: Iterable[Mapping[str, str]]) -> tuple[dict[tuple[Kind, str], _Seen], int]:
    """What the log's entries saw, per (kind, domain or address), and how many entries there were.
    An entry that cannot be read as the writer writes it counts for one request, at time 0."""
    seen: dict[tuple[Kind, str], _Seen] = {}
    read = 0
    for entry in denials:
        read += 1
        kind = _KINDS.get(entry.get("source", ""), "other")
        at = max(0, _int(entry.get("at"), 0))
        first = min(at, max(0, _int(entry.get("first"), at)))
        key = (kind, entry.get("seen") or "-")
        found = seen.get(key)
        if found is None:
            found = seen[key] = _Seen()
        # A stream entry names no client: a back-end request's is what it saw; a front-end
        # request's is unknown ("-", one client for all of them, never taken for a flood).
        client = entry.get("client") or (key[1] if kind == "ip" else "-")
        found.add(max(1, _int(entry.get("count"), 1)), first, at, entry.get("origin") or "", client)
    return seen, read


def _weigh(seen: dict[tuple[Kind, str], _Seen], let_go: Mapping[str, int]) -> list[Flood]:
    """Set each value's weight (`Observation.weight`), and return the clients that look like a
    flood: those that sent more than FLOOD_VALUES distinct values (`let_go`: per client, the
    values the summary did not keep)."""
    values: dict[str, int] = dict(let_go)
    requests: dict[str, int] = {}
    for traffic in seen.values():
        for client, count in traffic.clients.items():
            values[client] = values.get(client, 0) + 1
            requests[client] = requests.get(client, 0) + count
    for traffic in seen.values():
        traffic.weight = round(sum(1 / values[client] for client in traffic.clients), 6)
    floods = [
        Flood(client=client, values=n, requests=requests.get(client, 0))
        for client, n in values.items()
        if n > FLOOD_VALUES and client != "-"
    ]
    floods.sort(key=lambda flood: (-flood.values, flood.client))
    return floods


def _listed_domain(host: str, seen: _Seen, stored: list[tuple[str, DomainSet]]) -> str | None:
    """The stored entry that allows every recorded origin of `host` (the one with the most
    requests named), or None when some origin is allowed by none."""
    found: dict[str, int] = {}
    for origin, count in seen.origins.items():
        entry = next((e for e, one in stored if one.matches(host, origin)), None)
        if entry is None:
            return None
        found[entry] = found.get(entry, 0) + count
    return max(found, key=found.__getitem__) if found else None


def _listed_ip(address: str, stored: list[tuple[str, IPSet]]) -> str | None:
    return next((entry for entry, one in stored if address in one), None)


_Candidates = dict[str, list[Observation]]  # proposed entry -> the observations it allows


def _traffic(observations: list[Observation]) -> tuple[float, int, int]:
    """What ranks candidates: client weight, then requests, then the latest."""
    weight = round(sum(o.weight for o in observations), 6)
    return weight, sum(o.count for o in observations), max(o.last_ms for o in observations)


def _common_parent(hosts: list[str]) -> str:
    """The longest domain that every one of `hosts` is a strict subdomain of."""
    parents = [host.split(".")[1:] for host in hosts]
    common: list[str] = []
    for labels in zip(*(reversed(p) for p in parents), strict=False):
        if len(set(labels)) != 1:
            break
        common.append(labels[0])
    return ".".join(reversed(common))


def _wildcards(candidates: _Candidates, room: int) -> list[Wildcard]:
    """Replace subdomains of one registrable domain by a wildcard while the candidates do not fit
    `room`: the domain with the most subdomains seen first (then the most traffic), by the
    narrowest wildcard over them (`*.shop.example.com` for `a.shop.example.com` and
    `b.shop.example.com`). A registrable domain never has a public suffix below it, so no
    wildcard proposed here is over one; the wildcard a naive grouping would make over a public
    suffix (`*.github.io` for several `x.github.io` sites) is shown refused."""
    if len(candidates) <= room or room == 0:
        return []
    psl = public_suffixes()
    under: dict[str, list[str]] = {}
    sites: dict[str, list[str]] = {}  # public suffix -> registrable domains seen directly under it
    for entry in candidates:
        registrable = psl.privatesuffix(entry)
        if registrable is not None and registrable != entry:
            under.setdefault(registrable, []).append(entry)
        elif registrable == entry and (suffix := psl.publicsuffix(entry)) is not None:
            sites.setdefault(suffix, []).append(entry)
    considered: list[Wildcard] = []
    for suffix, hosts in sorted(sites.items()):
        if len(hosts) > 1:
            try:
                normalize_domain(f"*.{suffix}")
            except InvalidEntry as error:
                refused = Wildcard(entry=f"*.{suffix}", hosts=sorted(hosts), proposed=False, why=str(error))
                considered.append(refused)
    groups = sorted(
        (
            (hosts, _traffic([o for host in hosts for o in candidates[host]])[:2], parent)
            for parent, hosts in under.items()
        ),
        key=lambda group: (-len(group[0]), *(-t for t in group[1]), group[2]),
    )
    for hosts, _, _registrable in groups:
        if len(candidates) <= room or len(hosts) < 2:
            break
        parent = _common_parent(hosts)  # the narrowest wildcard over them all, at most `*.<registrable>`
        wildcard = f"*.{parent}"
        try:
            normalize_domain(wildcard)
        except InvalidEntry as error:  # cannot be (see above); refused like any other
            considered.append(Wildcard(entry=wildcard, hosts=sorted(hosts), proposed=False, why=str(error)))
            continue
        candidates[wildcard] = [o for host in hosts for o in candidates.pop(host)]
        why = (
            f"{len(hosts)} subdomains of {parent} seen, more hosts than the list has room for: "
            f"{wildcard} also allows any other subdomain of {parent} (not {parent} itself)"
        )
        considered.append(Wildcard(entry=wildcard, hosts=sorted(hosts), proposed=True, why=why))
        for observation in candidates[wildcard]:
            observation.why = f"a wildcard: {len(hosts)} subdomains of {parent} seen"
    return considered


def _one_list(
    kind: Kind,
    seen: dict[tuple[Kind, str], _Seen],
    stored: list[str],
    *,
    enabled: bool,
    limit: int,
    normalize: Callable[[str], Normalized],
    flooders: Mapping[str, int],
) -> tuple[ListProposal, list[Observation], list[Wildcard]]:
    """One list's proposal, the observations of its kind, and the wildcards considered."""
    out: list[Observation] = []
    wildcards: list[Wildcard] = []
    stored_domains = [(entry, DomainSet([entry])) for entry in stored] if kind == "domain" else []
    stored_ips = [(entry, IPSet([entry])) for entry in stored] if kind == "ip" else []
    candidates: _Candidates = {}
    observed = 0
    for (of_kind, value), traffic in seen.items():
        if of_kind != kind:
            continue
        observed += traffic.count
        observation = Observation(
            kind=kind,
            seen=value,
            count=traffic.count,
            first_ms=traffic.first,
            last_ms=traffic.last,
            status="refused",
            clients=len(traffic.clients),
            weight=traffic.weight,
        )
        out.append(observation)
        if value == "-":
            observation.why = NO_DOMAIN if kind == "domain" else NO_IP
            continue
        flooded = [flooders[client] for client in traffic.clients if client in flooders]
        if len(flooded) == len(traffic.clients):
            observation.why = FLOODED.format(values=min(flooded))
            continue
        if kind == "domain":
            listed = _listed_domain(value, traffic, stored_domains)
        else:
            listed = _listed_ip(value, stored_ips)
        if listed is not None:
            observation.status, observation.entry = "listed", listed
            continue
        try:
            entry = normalize(value).stored
        except InvalidEntry as error:
            observation.why = str(error)
            continue
        if entry in stored:
            observation.status, observation.entry = "listed", entry
            continue
        candidates.setdefault(entry, []).append(observation)
    room = max(0, limit - len(stored))
    if kind == "domain":
        wildcards.extend(_wildcards(candidates, room))
    ranked = sorted(candidates.items(), key=lambda c: (*(-t for t in _traffic(c[1])), c[0]))
    added = [entry for entry, _ in ranked[:room]]
    for wildcard in wildcards:
        if wildcard.proposed and wildcard.entry not in added:
            wildcard.proposed = False
            wildcard.why += "; but even so it ranks over the limit"
    for rank, (entry, observations) in enumerate(ranked):
        for observation in observations:
            observation.entry = entry
            if rank < room:
                observation.status = "proposed"
            else:
                observation.status = "over_limit"
                observation.why = (
                    f"not proposed: the list holds at most {limit} entries, and those proposed "
                    "saw more requests"
                )
    still_denied = sum(o.count for o in out if o.status in ("refused", "over_limit"))
    proposal = ListProposal(
        stored=list(stored),
        entries=[*stored, *added],
        added=added,
        enabled=enabled,
        observed=observed,
        still_denied=still_denied,
        share_denied=still_denied / observed if observed else 0.0,
    )
    return proposal, out, wildcards


def propose(
    denials: Iterable[Mapping[str, str]],
    stored: Restrictions | None,
    *,
    limit: int,
    normalize_ip: Callable[[str], Normalized],
    allow_private: bool = False,
    summary: Iterable[Mapping[str, str]] | None = None,
    let_go: Mapping[str, int] | None = None,
) -> Suggestion:
    """The allowlist that the recorded `denials` (stream entries: source, seen, origin, at,
    count, first) suggest for a token holding `stored`, at most `limit` entries a list.

    Domains are the hosts seen on front-end requests, normalised as `normalize_domain` stores
    them; addresses those seen on back-end requests, as `normalize_ip` (the admin's settings)
    stores them. What those refuse is shown with why, never proposed. Entries already stored
    are kept and take their room first; what they allow is counted under them. Then the rest,
    by traffic (requests, then the latest), up to the limit; when more hosts were seen than
    fit, subdomains of one registrable domain may become one wildcard (`Wildcard`).

    `summary`: the token's summary (its pairs, in the shape of stream entries with their
    `client`; `let_go`: per client, the pairs the summary did not keep), which counts what the
    capped stream trimmed: then `denials` are only those of the unknown-token log. Traffic is
    weighed per client address (`Observation.weight`) before requests, so that a client sending
    many distinct values (a flood of Origins from one holder of the token) weighs as one client,
    and what only a client that looks like a flood sent is refused (`Suggestion.floods`).
    """
    entries = list(denials) if summary is None else [*summary, *denials]
    seen, read = _gather(entries)
    floods = _weigh(seen, let_go or {})
    flooders = {flood.client: flood.values for flood in floods}
    r = stored or Restrictions()
    domains, observations, wildcards = _one_list(
        "domain",
        seen,
        r.domains,
        enabled=r.domain_enabled,
        limit=limit,
        normalize=normalize_domain,
        flooders=flooders,
    )
    ips, of_ips, _ = _one_list(
        "ip", seen, r.ips, enabled=r.ip_enabled, limit=limit, normalize=normalize_ip, flooders=flooders
    )
    observations += of_ips
    for (kind, value), traffic in seen.items():
        if kind == "other":
            observations.append(
                Observation(
                    kind=kind,
                    seen=value,
                    count=traffic.count,
                    first_ms=traffic.first,
                    last_ms=traffic.last,
                    status="refused",
                    why=NO_SOURCE,
                    clients=len(traffic.clients),
                    weight=traffic.weight,
                )
            )
    observations.sort(key=lambda o: (-o.count, -o.last_ms, o.kind, o.seen))
    total = sum(o.count for o in observations)
    still_denied = sum(o.count for o in observations if o.status in ("refused", "over_limit"))
    return Suggestion(
        limit=limit,
        stored=stored,
        domains=domains,
        ips=ips,
        observations=observations,
        wildcards=wildcards,
        entries_read=read,
        denials=total,
        still_denied=still_denied,
        share_denied=still_denied / total if total else 0.0,
        allow_private=allow_private,
        oldest_ms=min((t.first for t in seen.values()), default=None),
        newest_ms=max((t.last for t in seen.values()), default=None),
        summary=summary is not None,
        floods=floods,
    )
