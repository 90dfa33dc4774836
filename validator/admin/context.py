"""What every admin job shares: the store, the IP prefix floor, the checked token hash, and the
outcome of a write (`Change`). `Admin` holds one `AdminContext`; each job module takes it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

import msgspec

from validator.errors import InvalidEntry, StoreNotInitialised
from validator.model import MAX_TOKEN_LENGTH, Restrictions, is_token, token_rule
from validator.rules.entries import Normalized
from validator.rules.networks import normalize_ip
from validator.store import Store

__all__ = ["NOTHING_STORED", "AdminContext", "Change", "change", "normalize_all", "notes_of"]

NOTHING_STORED = "nothing is stored for this token: nothing was changed (and no record was created)"


class Change(msgspec.Struct, kw_only=True):
    """The outcome of one admin write: what is stored now, and what the admin should be told.

    `restrictions` is None when the token has no record: a removal, clear, disable or mode
    change on such a token changes nothing (`changed` False, a note says so) and creates no
    record, for an empty record would make a token that validators deny as unknown unrestricted.
    """

    restrictions: Restrictions | None
    changed: bool
    notes: list[str] = msgspec.field(default_factory=list)


def change(stored: Restrictions | None, changed: bool, notes: list[str] | None = None) -> Change:
    """The `Change` of a write that may find no record (then a note says nothing was created)."""
    if stored is None:
        return Change(restrictions=None, changed=False, notes=[*(notes or ()), NOTHING_STORED])
    return Change(restrictions=stored, changed=changed, notes=notes or [])


@dataclasses.dataclass(frozen=True)
class AdminContext:
    """One admin's store and entry rules (`min_prefix_v4`/`min_prefix_v6`: the shortest prefix an
    IP network entry may have)."""

    store: Store
    min_prefix_v4: int
    min_prefix_v6: int

    def token_hash(self, token: str) -> str:
        """The token's keyed hash, after checking it is a token validators would look up.
        Raises `InvalidEntry`."""
        if not token:
            raise InvalidEntry("the token must not be empty")
        if not is_token(token, MAX_TOKEN_LENGTH):
            # docs/behaviour.md: anything else was never issued, and validators refuse it before any look-up.
            raise InvalidEntry(f"{token_rule(MAX_TOKEN_LENGTH)}; this one is not, and validators refuse it")
        return self.store.token_hash(token)

    def normalize_ip(self, allow_private: bool) -> Callable[[str], Normalized]:
        """The IP entry normaliser under this admin's prefix floor."""
        return functools.partial(
            normalize_ip,
            allow_private=allow_private,
            min_prefix_v4=self.min_prefix_v4,
            min_prefix_v6=self.min_prefix_v6,
        )

    async def require_marker(self) -> None:
        """Raise `StoreNotInitialised` unless the store is marked for this secret: validators then
        fail closed on every check they have not cached, whatever is stored."""
        state = await self.store.marker_state()
        if state != "ok":
            what = "is marked for another secret"
            if state == "missing":
                what = "has no marker (not initialised, or wiped)"
            raise StoreNotInitialised(
                f"the store {what}: validators fail closed on every uncached check", state=state
            )


def normalize_all(entries: Iterable[str], normalize: Callable[[str], Normalized]) -> list[Normalized]:
    """Each distinct entry normalised, in order. Raises `InvalidEntry` naming every refused one
    (nothing is written then)."""
    done: list[Normalized] = []
    problems: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        try:
            result = normalize(entry)
        except InvalidEntry as error:
            problems.append(str(error))
            continue
        if result.stored not in seen:
            seen.add(result.stored)
            done.append(result)
    if problems:
        raise InvalidEntry("; ".join(problems) + " (nothing was changed)")
    return done


def notes_of(normalized: Iterable[Normalized]) -> list[str]:
    """What normalising said about the entries (`'entry': note`), for the admin."""
    return [f"{n.entry!r}: {n.note}" for n in normalized if n.note]
