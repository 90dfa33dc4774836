"""Per-token API access restrictions: allowed domains for browsers, allowed IPs for servers.

async with Validator.from_url("redis://localhost:6379/0", secret="...") as validator:
    decision = await validator.check(token, origin=origin, client_ip=client_ip)
    if not decision.allowed:
        ...  # 403
"""

from __future__ import annotations

from validator.admin import Admin, Change
from validator.core import Settings, Stats, Validator
from validator.errors import (
    ConfigurationError,
    InvalidEntry,
    LimitExceeded,
    StoreNotInitialised,
    StoreUnavailable,
    StoreUnmarked,
    ValidatorError,
)
from validator.model import Decision, Mode, Reason, RestrictionKind, Restrictions, Source
from validator.store import Store

__all__ = [
    "Admin",
    "Change",
    "ConfigurationError",
    "Decision",
    "InvalidEntry",
    "LimitExceeded",
    "Mode",
    "Reason",
    "RestrictionKind",
    "Restrictions",
    "Settings",
    "Source",
    "Stats",
    "Store",
    "StoreNotInitialised",
    "StoreUnavailable",
    "StoreUnmarked",
    "Validator",
    "ValidatorError",
]
