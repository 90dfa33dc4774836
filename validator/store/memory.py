"""The in-process `memory://` store (the `memory` extra: fakeredis with its Lua runtime).

Stores with the same name share data within a process. There is no Redis to send invalidations,
so writes notify the validators of the same process directly (`local_listeners`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from validator.errors import ConfigurationError
from validator.store.backends import register

if TYPE_CHECKING:
    from validator.store import Store

_MEMORY_SERVERS: dict[str, Any] = {}
# Listeners of in-process changes, per memory server: a `memory://` store has no Redis to send
# invalidations, so its writes notify the validators of the same process directly.
_MEMORY_LISTENERS: dict[str, list[Callable[[str], None]]] = {}
_MEMORY_LOCK = threading.Lock()


@register("memory")
def _memory(
    cls: type[Store], url: str, common: dict[str, Any], timeout: float, connect_timeout: float
) -> Store:
    try:
        import fakeredis  # in-process store only: not imported for real Redis
    except ImportError:
        raise ConfigurationError(
            "the memory:// store needs the `memory` extra: pip install 'token-access-validator[memory]'"
        ) from None

    name = url[len("memory://") :]
    with _MEMORY_LOCK:
        server = _MEMORY_SERVERS.setdefault(name, fakeredis.FakeServer())
        listeners = _MEMORY_LISTENERS.setdefault(name, [])
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    store = cls(client, local_listeners=listeners, **common)
    # An in-process store cannot be wiped behind our back: it is marked when created, so
    # the demo and unit tests need no `init`.
    fakeredis.FakeRedis(server=server, decode_responses=True).set(
        store.marker_key, store.marker_value, nx=True
    )
    return store
