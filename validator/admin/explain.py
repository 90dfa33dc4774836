"""Why a request would be allowed or denied: the decision read straight from the store (no
cache), for a request described by hand (`explain_token`) or by a logged denial (`replay`)."""

from __future__ import annotations

from collections.abc import Mapping

from validator.admin.context import AdminContext
from validator.errors import InvalidEntry
from validator.rules.explain import Explanation, explain
from validator.store.denial_streams import FoundDenial

__all__ = ["Explanation", "explain_token", "replay", "replayed_request"]


async def explain_token(
    context: AdminContext,
    token: str,
    *,
    origin: str | None,
    referer: str | None,
    sec_fetch: bool,
    client_ip: str | None,
    unknown_allowed: bool,
) -> Explanation:
    """The decision for such a request on what is stored for `token`, with why. Raises
    `StoreNotInitialised` first when the store is not marked for this secret."""
    await context.require_marker()
    return explain(
        await context.store.read(context.token_hash(token)),
        origin=origin,
        referer=referer,
        sec_fetch=sec_fetch,
        client_ip=client_ip,
        unknown_allowed=unknown_allowed,
    )


async def replay(context: AdminContext, found: FoundDenial, *, unknown_allowed: bool) -> Explanation:
    """A logged denial's request decided again on what is stored for its token now. Raises
    `StoreNotInitialised` as `explain_token` does, `InvalidEntry` if two stored tokens share the
    fingerprint of an unknown-token log entry."""
    await context.require_marker()
    token_hash = found.token_hash
    if token_hash is None:
        hashes = await context.store.hashes_starting(found.fingerprint)
        if len(hashes) > 1:
            raise InvalidEntry(
                f"{len(hashes)} stored tokens share the fingerprint {found.fingerprint}: "
                "give the token to replay the denial"
            )
        token_hash = hashes[0] if hashes else None
    restrictions = None if token_hash is None else await context.store.read(token_hash)
    request = replayed_request(found.entry)
    return explain(
        restrictions,
        origin=request["origin"],
        client_ip=request["client_ip"],
        unknown_allowed=unknown_allowed,
    )


def replayed_request(entry: Mapping[str, str]) -> dict[str, str | None]:
    """The request a denial-log entry describes, as `explain` takes it (origin, client_ip): a
    front-end request by its recorded origin (or its host, over https), a back-end one by its
    client address; "-" (none seen) as none."""
    seen = entry.get("seen", "-")
    if entry.get("source") == "front_end":
        return {
            "origin": entry.get("origin") or (f"https://{seen}" if seen != "-" else "null"),
            "client_ip": None,
        }
    return {"origin": None, "client_ip": None if seen in ("", "-") else seen}
