"""Routes the middleware lets through without a token: a path list and a route marker.

    app = TokenAccessMiddleware(app, validator=validator, exempt=["/healthz", "/docs", "/openapi.json"])

    @public
    async def healthz(request): ...

A path is exempt only as a whole `scope["path"]`, and only when Starlette routes it, for this very
request (method included), to a route declared without path parameters: `/{name}` happening to
match `/healthz`, a `POST` that falls through to another route, a mount with parameters or a
FastAPI included router are checked as usual. Nothing here is on the path of other requests: the
middleware pays one set look-up for them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from validator.errors import ConfigurationError
from validator.web.types import Scope

__all__ = ["public"]

log = logging.getLogger("validator")

_MARK = "__token_access_public__"
# Middlewares keep the app they wrap as `.app`: followed this deep to find the routes.
_MAX_WRAPPERS = 32
# Mounts inside mounts, followed this deep (an app mounted inside itself would loop).
_MAX_MOUNTS = 16

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def public(endpoint: Endpoint) -> Endpoint:
    """Mark a Starlette or FastAPI endpoint as needing no token under `TokenAccessMiddleware`.

    Honoured for routes without path parameters found when the app starts (the middleware reads
    the routes at lifespan start-up); a marked route inside a FastAPI included router or a mount
    with parameters stays protected. In FastAPI, a route without the `TokenAccess` dependency
    is public anyway."""
    setattr(endpoint, _MARK, True)
    return endpoint


def _marked(endpoint: object) -> bool:
    return getattr(endpoint, _MARK, False) is True


def _exact_paths(paths: Iterable[str] | str) -> frozenset[str]:
    if isinstance(paths, str):
        paths = [paths]
    found = set()
    for path in paths:
        # A prefix or pattern form would exempt paths nobody listed (`/docs*` and `/docs-admin`).
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "*{}?#"):
            raise ConfigurationError(
                f"exempt path {path!r} must be one exact path such as '/healthz' "
                "(no wildcard, parameter, query or fragment)"
            )
        found.add(path)
    return frozenset(found)


def _routes_of(app: object) -> list[Any] | None:
    """The route list of a Starlette or FastAPI app (or router), looking through middlewares."""
    for _ in range(_MAX_WRAPPERS):
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return routes
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _marked_paths(routes: list[Any], prefix: str = "", depth: int = 0) -> set[str]:
    """The paths of marked routes without parameters, mounts without parameters included."""
    from starlette.routing import Mount, Route, WebSocketRoute

    found: set[str] = set()
    for route in routes:
        if isinstance(route, Route | WebSocketRoute):
            if not route.param_convertors and _marked(route.endpoint):
                found.add(prefix + route.path)
        elif isinstance(route, Mount) and not route.param_convertors and depth < _MAX_MOUNTS:
            inner = _routes_of(route.app)
            if inner:
                found |= _marked_paths(inner, prefix + route.path, depth + 1)
    return found


class Exemption:
    """The exempt paths of one middleware: `path in exemption` on the hot path, `applies(scope)`
    (the routing check) only for the few requests whose path is listed."""

    __slots__ = ("_listed", "_logged", "paths")

    def __init__(self, paths: Iterable[str] | str) -> None:
        self._listed = _exact_paths(paths)
        self.paths = self._listed
        self._logged: set[str] = set()

    def discover(self, app: object) -> None:
        """Add the paths of the routes marked `public` (at start-up: routes are known then)."""
        routes = _routes_of(app)
        if not routes:
            return
        # Routes of another framework than Starlette (no starlette to import): the list alone.
        with contextlib.suppress(ImportError):
            self.paths = self._listed | _marked_paths(routes)

    def applies(self, scope: Scope, app: object) -> bool:
        """Whether this request, whose path is listed, reaches a public route and nothing else."""
        try:
            # The app this middleware wraps (through middlewares: `add_middleware` puts
            # Starlette's own ones between), not `scope["app"]`, which may be an outer app.
            routes = _routes_of(app)
            if routes is None:
                return self._refuse(scope["path"], "no Starlette or FastAPI routes found to check it against")
            leaf = _route_for(routes, dict(scope))  # a copy: routing writes into the scope
        except Exception:
            # A route whose matching fails is no route to exempt.
            log.warning("exempt path %r could not be routed: checked as usual", scope["path"], exc_info=True)
            return False
        if leaf is None:
            return self._refuse(scope["path"], "it is not routed to one route without path parameters")
        if scope["path"] in self._listed or _marked(leaf):
            return True
        return self._refuse(scope["path"], "it is routed to a route not marked public")

    def _refuse(self, path: str, why: str) -> bool:
        if path not in self._logged and len(self._logged) < 100:
            self._logged.add(path)
            log.warning("exempt path %r is checked as usual: %s", path, why)
        return False


def _route_for(routes: list[Any], scope: Scope, depth: int = 0) -> object | None:
    """The endpoint Starlette's router picks for `scope` (its first full match, as
    `Router.app` does), when that route and every mount on the way has no path parameters;
    None otherwise (a parameter route, a method that falls through, an included router...)."""
    from starlette.routing import Match, Mount, Route, WebSocketRoute

    for route in routes:
        match, child = route.matches(scope)
        # The router takes the first full match; a partial one (another method) only when no
        # route matches fully, and then answers 405: no endpoint runs, nothing to exempt.
        if match is not Match.FULL:
            continue
        if child.get("path_params"):
            return None
        if isinstance(route, Route | WebSocketRoute):
            return route.endpoint
        if isinstance(route, Mount):
            inner = _routes_of(route.app)
            if inner is None:
                return route.app  # a static mount (files): it serves this exact path
            return _route_for(inner, {**scope, **child}, depth + 1) if depth < _MAX_MOUNTS else None
        return None  # a Host, a FastAPI included router, a route type of one's own
    return None
