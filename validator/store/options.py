"""The store's options, defined once: `Store.from_url`, `Validator.from_url` and `Admin.from_url`
take them as keywords (`**options: Unpack[StoreOptions]`), with the defaults said here.

Two roles wait on the store differently, on purpose, and say so in `roles`: a validator answers a
request, so a slow read fails fast (0.5 s) to the circuit breaker, stale-if-error and 503; the
admin API writes, so it waits out a busy server (2 s), and `validator-admin`, run by a person,
perhaps over a tunnel, longer still (5 s).
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from validator.errors import ConfigurationError
from validator.options import Option, fields, resolved
from validator.store.layout import DEFAULT_KEY_PREFIX

__all__ = ["ADMIN", "ADMIN_CLI", "WRITE_RETRY", "StoreOptions", "checked_store_options", "store_default"]

# The roles whose defaults differ (see the module docstring); a validator has the plain defaults.
ADMIN = "admin"
ADMIN_CLI = "admin-cli"

# Seconds an admin write that met a failover is tried again (`Store.write_retry`).
WRITE_RETRY = 5.0

_WAIT = {ADMIN: 2.0, ADMIN_CLI: 5.0}


class StoreOptions(TypedDict, total=False):
    """How to reach and read the store; every field optional (defaults in its `Option`)."""

    secret: Annotated[
        str | bytes | None,
        Option(
            None,
            "key of the token hash, the same for validators and admin tools "
            "(default: $VALIDATOR_SECRET, else a public default key, with a warning)",
        ),
    ]
    key_prefix: Annotated[
        str,
        Option(
            DEFAULT_KEY_PREFIX,
            "prefix of every Redis key; the same for validators and admin tools",
            metavar="PREFIX",
        ),
    ]
    limit: Annotated[int, Option(5, "entries allowed per list (writes beyond it are refused)", metavar="N")]
    timeout: Annotated[float, Option(0.5, "seconds a Redis command may take", roles=_WAIT, metavar="SECONDS")]
    connect_timeout: Annotated[
        float, Option(0.5, "seconds a Redis connection may take", roles=_WAIT, metavar="SECONDS")
    ]
    write_retry: Annotated[
        float,
        Option(
            WRITE_RETRY,
            "seconds an admin write that met a failover is tried again on the new primary "
            "(a promotion comes 1-3 s after Redis notices the failure)",
            metavar="SECONDS",
        ),
    ]


def store_default(name: str, role: str | None = None) -> Any:
    """The default of the store option `name` for `role`."""
    return next(f.option.default_for(role) for f in fields(StoreOptions) if f.name == name)


def checked_store_options(given: StoreOptions, *, owner: str, role: str | None = None) -> StoreOptions:
    """`given` over the defaults of `role`; raises `ConfigurationError` for an unknown or bad one."""
    options = resolved(StoreOptions, given, owner=owner, role=role)
    if options["timeout"] <= 0 or options["connect_timeout"] <= 0:
        raise ConfigurationError("timeouts must be positive")
    if options["write_retry"] < 0:
        raise ConfigurationError("write_retry must not be negative")
    return options
