"""Benchmark data: tokens with 5 domains and 5 IPs each, their requests, seeding through the admin API."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from validator import Admin, Restrictions
from validator.admin.api import PreparedPut

__all__ = [
    "POOL",
    "SECRET",
    "Request",
    "allowed_request",
    "denied_request",
    "domains",
    "ips",
    "record",
    "seed",
    "token",
]

SECRET = "benchmark-secret"
LIST_LENGTH = 5

# (token, origin, client_ip): a front-end request has an Origin and no address (the middleware
# only looks up the address of back-end requests), a back-end one the reverse.
Request = tuple[str, str | None, str | None]


def token(i: int, kind: str = "live") -> str:
    """A token of a realistic length (35 characters), unique per `i` and `kind`."""
    return f"tok_{kind}_{i:026d}"


# The realistic data set (`shared=True`): every token lists 5 of POOL domains and 5 of POOL
# addresses, so that requests come from POOL Origins and POOL client IPs in all, as a service
# sees them; the worst case (the default) gives every token, and every request, values of its own.
POOL = 50


def domains(i: int, shared: bool = False) -> list[str]:
    if shared:
        return [f"app{(i + k) % POOL}.example.com" for k in range(LIST_LENGTH)]
    return [f"app{k}.t{i}.example.com" for k in range(LIST_LENGTH)]


def ips(i: int, shared: bool = False) -> list[str]:
    if shared:
        # 11.255.0.0/26, public unicast.
        return [str(ipaddress.IPv4Address(0x0BFF0000 + (i + k) % POOL)) for k in range(LIST_LENGTH)]
    # 11.0.0.0/8 is public unicast: 5 distinct addresses per token for up to 3 million tokens.
    return [str(ipaddress.IPv4Address(0x0B000000 + i * LIST_LENGTH + k)) for k in range(LIST_LENGTH)]


def record(i: int, shared: bool = False) -> Restrictions:
    """Both restrictions on, 5 domains, 5 IPs: every check consults a list."""
    return Restrictions(
        domain_enabled=True, ip_enabled=True, domains=sorted(domains(i, shared)), ips=sorted(ips(i, shared))
    )


def allowed_request(i: int, front_end: bool, kind: str = "live", shared: bool = False) -> Request:
    k = i % LIST_LENGTH
    if front_end:
        return token(i, kind), f"https://{domains(i, shared)[k]}", None
    return token(i, kind), None, ips(i, shared)[k]


def denied_request(i: int, front_end: bool, kind: str = "live", shared: bool = False) -> Request:
    """A request from an unlisted domain or address. In the worst case a look-alike distinct per
    token (as the allowed ones are), so that no memo of recent hosts or addresses can answer it;
    with `shared`, one of the POOL values that token does not list."""
    k = i % LIST_LENGTH
    if shared:
        j = (i + LIST_LENGTH + (i // LIST_LENGTH) % (POOL - LIST_LENGTH)) % POOL
        if front_end:
            return token(i, kind), f"https://app{j}.example.com", None
        return token(i, kind), None, str(ipaddress.IPv4Address(0x0BFF0000 + j))
    if front_end:
        return token(i, kind), f"https://app{k}.t{i}.example.net", None
    return token(i, kind), None, str(ipaddress.IPv4Address(0x0C000000 + i * LIST_LENGTH + k))


async def seed(
    admin: Admin, indices: Sequence[int], kind: str = "live", batch: int = 1000, shared: bool = False
) -> None:
    """Store the records of `indices` with `Admin.put_many` (what `import` uses), in pipelined batches.

    The entries are generated in their normal form, so they go in as `PreparedPut` directly.
    The store is initialised first (admin writes are refused on an unmarked store).
    """
    await admin.init(force=True)
    for start in range(0, len(indices), batch):
        await admin.put_many(
            [
                PreparedPut(admin.token_hash(token(i, kind)), record(i, shared))
                for i in indices[start : start + batch]
            ]
        )
