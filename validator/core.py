"""The Validator: `check()` = local cache -> store -> rules."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Literal

from validator.cache import Cache
from validator.errors import ConfigurationError, StoreUnavailable
from validator.model import Decision, Reason, decision
from validator.rules import TokenRules, classify
from validator.store import DEFAULT_KEY_PREFIX, Store, fingerprint

__all__ = ["Validator"]

log = logging.getLogger("validator")


class Validator:
    """Decides, per request, whether a token may be used from where the request comes from.

    Build it with `Validator.from_url(...)`, use it as `async with`, and call `check()`.
    """

    def __init__(
        self,
        store: Store,
        *,
        unknown_token: Literal["allow", "deny"] = "allow",
        fail_open: bool = False,
        cache_size: int = 100_000,
        unknown_cache_size: int = 10_000,
        ttl: float = 60.0,
        unknown_ttl: float = 10.0,
        max_stale: float = 300.0,
        max_concurrent_loads: int = 64,
    ) -> None:
        if unknown_token not in ("allow", "deny"):
            raise ConfigurationError(f"unknown_token must be 'allow' or 'deny', not {unknown_token!r}")
        if max_concurrent_loads < 1:
            raise ConfigurationError("max_concurrent_loads must be at least 1")
        self.store = store
        self.unknown_token = unknown_token
        self.fail_open = fail_open
        self.cache: Cache[TokenRules] = Cache(
            max_entries=cache_size,
            max_unknown=unknown_cache_size,
            ttl=ttl,
            unknown_ttl=unknown_ttl,
            max_stale=max_stale,
        )
        self._unknown_rules = TokenRules(None, unknown_allowed=unknown_token == "allow")
        # Distinct cold tokens each need a read; this bounds how many run at once, so a flood
        # of random tokens queues here instead of piling onto Redis.
        self._load_slots = asyncio.Semaphore(max_concurrent_loads)

    @classmethod
    def from_url(
        cls,
        url: str = "memory://",
        *,
        secret: str | bytes | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        limit: int = 5,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
        unknown_token: Literal["allow", "deny"] = "allow",
        fail_open: bool = False,
        cache_size: int = 100_000,
        unknown_cache_size: int = 10_000,
        ttl: float = 60.0,
        unknown_ttl: float = 10.0,
        max_stale: float = 300.0,
        max_concurrent_loads: int = 64,
    ) -> Validator:
        """A validator on the store at `url` (see `Store.from_url`); settings as in `__init__`.

        `secret` keys the token hash (default: the VALIDATOR_SECRET environment variable) and
        must be the same for the validator and the admin tools.
        """
        store = Store.from_url(
            url,
            secret=secret,
            key_prefix=key_prefix,
            limit=limit,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        return cls(
            store,
            unknown_token=unknown_token,
            fail_open=fail_open,
            cache_size=cache_size,
            unknown_cache_size=unknown_cache_size,
            ttl=ttl,
            unknown_ttl=unknown_ttl,
            max_stale=max_stale,
            max_concurrent_loads=max_concurrent_loads,
        )

    async def __aenter__(self) -> Validator:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Prepare for checks. An unreachable store is not an error here: checks fail closed."""

    async def close(self) -> None:
        """Release connections."""
        await self.store.close()

    def check_cached(
        self,
        token: str,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
    ) -> Decision | None:
        """The decision from the local cache alone, or None when the token is not cached fresh.

        Synchronous: the fast path for callers that can skip an `await` on a hit.
        """
        entry = self.cache.fresh(token)
        if entry is None:
            return None
        return entry.value.decide(origin, referer, sec_fetch, client_ip)

    async def check(
        self,
        token: str,
        *,
        origin: str | None = None,
        referer: str | None = None,
        sec_fetch: bool = False,
        client_ip: str | None = None,
    ) -> Decision:
        """Decide one request made with `token`.

        `origin` and `referer` are the header values (None when absent), `sec_fetch` whether
        any `Sec-Fetch-*` header was present, `client_ip` the client's address as text.
        Raises `StoreUnavailable` when the store cannot be read and nothing usable is cached
        (unless `fail_open`).
        """
        entry = self.cache.fresh(token)
        if entry is not None:
            return entry.value.decide(origin, referer, sec_fetch, client_ip)
        token_hash = self.store.token_hash(token)
        try:
            rules = await self.cache.load(token, token_hash, lambda: self._read(token_hash))
        except StoreUnavailable:
            stale = self.cache.usable(token)
            if stale is not None:
                return stale.value.decide(origin, referer, sec_fetch, client_ip)
            if self.fail_open:
                log.warning("store unavailable; failing open for token %s", fingerprint(token_hash))
                return decision(True, Reason.STORE_UNAVAILABLE, classify(origin, referer, sec_fetch))
            raise
        return rules.decide(origin, referer, sec_fetch, client_ip)

    async def _read(self, token_hash: str) -> tuple[TokenRules, bool]:
        async with self._load_slots:
            restrictions = await self.store.read(token_hash)
        if restrictions is None:
            return self._unknown_rules, False
        return TokenRules(restrictions), True
