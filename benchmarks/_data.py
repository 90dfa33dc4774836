"""Benchmark data: tokens with 5 domains and 5 IPs each, their requests, seeding through the admin API."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from validator import Admin, Restrictions
from validator.admin.api import PreparedPut

__all__ = [
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


def domains(i: int) -> list[str]:
    return [f"app{k}.t{i}.example.com" for k in range(LIST_LENGTH)]


def ips(i: int) -> list[str]:
    # 11.0.0.0/8 is public unicast: 5 distinct addresses per token for up to 3 million tokens.
    return [str(ipaddress.IPv4Address(0x0B000000 + i * LIST_LENGTH + k)) for k in range(LIST_LENGTH)]


def record(i: int) -> Restrictions:
    """Both restrictions on, 5 domains, 5 IPs: every check consults a list."""
    return Restrictions(domain_enabled=True, ip_enabled=True, domains=sorted(domains(i)), ips=sorted(ips(i)))


def allowed_request(i: int, front_end: bool, kind: str = "live") -> Request:
    k = i % LIST_LENGTH
    if front_end:
        return token(i, kind), f"https://{domains(i)[k]}", None
    return token(i, kind), None, ips(i)[k]


def denied_request(i: int, front_end: bool, kind: str = "live") -> Request:
    """A request from an unlisted look-alike domain or address, distinct per token (as the
    allowed ones are), so that no memo of recent hosts or addresses can answer it."""
    k = i % LIST_LENGTH
    if front_end:
        return token(i, kind), f"https://app{k}.t{i}.example.net", None
    return token(i, kind), None, str(ipaddress.IPv4Address(0x0C000000 + i * LIST_LENGTH + k))


async def seed(admin: Admin, indices: Sequence[int], kind: str = "live", batch: int = 1000) -> None:
    """Store the records of `indices` with `Admin.put_many` (what `import` uses), in pipelined batches.

    The entries are generated in their normal form, so they go in as `PreparedPut` directly.
    The store is initialised first (admin writes are refused on an unmarked store).
    """
    await admin.init(force=True)
    for start in range(0, len(indices), batch):
        await admin.put_many(
            [PreparedPut(admin.token_hash(token(i, kind)), record(i)) for i in indices[start : start + batch]]
        )
