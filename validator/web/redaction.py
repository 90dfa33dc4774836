"""Tokens out of access logs: a `logging.Filter` that redacts the token query parameter.

A token sent as `?api_key=...` is part of the request line, which uvicorn writes to its access
log (and, for WebSocket handshakes, to its error log). Attach the filter to those loggers:

    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    logging.getLogger("uvicorn.error").addFilter(RedactTokens())

or run `uvicorn.run(app, log_config=uvicorn_log_config())`, or put it in a `--log-config` file
(see README, "Tokens in access logs").
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from validator.web.middleware import query_names

__all__ = ["RedactTokens", "uvicorn_log_config"]

# A query: from a `?` to the next whitespace. Nothing else may end it: a token may hold any
# visible character, and stopping at one (a quote, say) would leave the rest of it in the log.
_QUERY = re.compile(r"\?(\S+)")


class RedactTokens(logging.Filter):
    """Replaces the value of every `names` query parameter in a record's message and arguments.

    `names` are the middleware's `token_query` (default `api_key`); every name the middleware
    reads as it is matched too: percent-encoded (`api%5Fkey=`), and the spellings frameworks
    read as it (`api.key`, `API_KEY`, `api_key[]`, a pair after a `;`: `query_names`).
    """

    def __init__(self, names: Iterable[str] = ("api_key",), replacement: str = "<redacted>") -> None:
        super().__init__()
        self.names = frozenset(names)
        self.replacement = replacement

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = self.redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            if any(isinstance(arg, str) and "?" in arg for arg in args):
                record.args = tuple(self.redact(arg) if isinstance(arg, str) else arg for arg in args)
        elif isinstance(args, Mapping):
            record.args = {
                key: self.redact(value) if isinstance(value, str) else value for key, value in args.items()
            }
        return True

    def redact(self, text: str) -> str:
        """`text` with the token query parameters of every URL in it redacted."""
        if "?" not in text:
            return text
        return _QUERY.sub(self._redact_query, text)

    def _redact_query(self, match: re.Match[str]) -> str:
        pairs = match.group(1).split("&")
        for i, pair in enumerate(pairs):
            # Every spelling the middleware reads as the parameter (`query_names`: `api.key`,
            # `API_KEY`, `api_key[]`, ... and a pair after a `;`), from it to the pair's end.
            pieces = pair.split(";")
            for j, piece in enumerate(pieces):
                key, eq, _ = piece.partition("=")
                if eq and self._names_token(key):
                    pairs[i] = ";".join([*pieces[:j], f"{key}={self.replacement}"])
                    break
        return "?" + "&".join(pairs)

    def _names_token(self, key: str) -> bool:
        if key in self.names or unquote_plus(key) in self.names:
            return True
        read_as = query_names(key.encode("latin-1", "replace"))
        return any(name.encode("utf-8").lower() in read_as for name in self.names)


def uvicorn_log_config(
    base: Mapping[str, Any] | None = None, names: Iterable[str] = ("api_key",)
) -> dict[str, Any]:
    """uvicorn's logging configuration (`base`, default uvicorn's own) with `RedactTokens` on
    the access log and on the error log (which names WebSocket handshakes)."""
    if base is None:
        from uvicorn.config import LOGGING_CONFIG  # the `demo` extra

        base = LOGGING_CONFIG
    config: dict[str, Any] = copy.deepcopy(dict(base))
    config.setdefault("filters", {})["redact_tokens"] = {
        "()": f"{__name__}.RedactTokens",
        "names": list(names),
    }
    loggers = config.setdefault("loggers", {})
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = loggers.setdefault(name, {})
        logger["filters"] = [*logger.get("filters", ()), "redact_tokens"]
    return config
