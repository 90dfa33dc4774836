"""`Admin.from_url`'s keywords: the store's options (`StoreOptions`, with the admin role's
defaults) and the admin's own (`AdminSettings`, meaning: `Admin`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, TypedDict

from validator.options import Option
from validator.rules.networks import DEFAULT_MIN_PREFIX_V4, DEFAULT_MIN_PREFIX_V6
from validator.store.options import StoreOptions

__all__ = ["AdminOptions", "AdminSettings"]


class AdminSettings(TypedDict, total=False):
    """The admin's own settings."""

    min_prefix_v4: Annotated[int, Option(DEFAULT_MIN_PREFIX_V4, "shortest IPv4 network entry allowed")]
    min_prefix_v6: Annotated[int, Option(DEFAULT_MIN_PREFIX_V6, "shortest IPv6 network entry allowed")]
    actor: Annotated[
        str | None, Option(None, "who makes the changes (default: $VALIDATOR_ACTOR, else user@host)")
    ]
    history_length: Annotated[
        int | None,
        Option(None, "history entries kept per token (default: $VALIDATOR_HISTORY_LENGTH, else 50)"),
    ]
    history_max_age: Annotated[
        float | timedelta | str | None,
        Option(None, "age beyond which history entries go (default: $VALIDATOR_HISTORY_MAX_AGE, else none)"),
    ]


class AdminOptions(StoreOptions, AdminSettings, total=False):
    """`Admin.from_url`'s keywords."""
