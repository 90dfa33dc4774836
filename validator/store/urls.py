"""Store URLs that name several hosts: `redis+cluster://` and `redis+sentinel://` (and `rediss+...`).

In the style of the `limits` library: `scheme://[[user]:password@]host:port[,host:port...][/path]`
with options as query parameters. redis-py parses single-host URLs; these it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from validator.errors import ConfigurationError

__all__ = ["MultiHostURL", "parse_multihost"]

# Options of the TLS connection, as redis-py names them; every value is text but these.
_TLS_OPTIONS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
_BOOLEANS = {"ssl_check_hostname"}
_INTEGERS = {"db", "max_connections"}


@dataclass
class MultiHostURL:
    """The parts of a multi-host store URL."""

    scheme: str
    hosts: list[tuple[str, int]]
    path: str
    username: str | None
    password: str | None
    tls: bool
    options: dict[str, Any] = field(default_factory=dict)

    def node_url(self, host: str, port: int, db: int = 0) -> str:
        """A `redis://` URL of one node with the URL's credentials (for `Multiplexer`)."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        host = host.strip("[]")
        address = f"[{host}]" if ":" in host else host
        return f"redis://{auth}{address}:{int(port)}/{int(db)}"

    def node_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of redis-py for a connection to one Redis node (auth, TLS)."""
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls:
            kwargs["ssl"] = True
            kwargs.update({k: v for k, v in self.options.items() if k in _TLS_OPTIONS})
        return kwargs


def _boolean(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"store URL option {name}={value!r} is not a boolean")


def _host(text: str, default_port: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ConfigurationError(f"bad store URL {url!r}: empty host in {text!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ConfigurationError(f"bad store URL {url!r}: bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"bad store URL {url!r}: port {port} out of range")
    return host, port


def parse_multihost(url: str, *, default_port: int, options: set[str]) -> MultiHostURL:
    """Parse `url`, accepting the query `options` (plus the TLS ones for `rediss+...`).

    Raises `ConfigurationError` for anything malformed or unknown.
    """
    parts = urlsplit(url)
    tls = parts.scheme.startswith("rediss+")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    if not hostlist:
        raise ConfigurationError(f"bad store URL {url!r}: give at least one host:port")
    hosts = [_host(text, default_port, url) for text in hostlist.split(",")]
    allowed = options | (_TLS_OPTIONS if tls else set())
    parsed: dict[str, Any] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        if name not in allowed:
            raise ConfigurationError(
                f"unknown option {name!r} in store URL {url!r}"
                + (f"; allowed: {', '.join(sorted(allowed))}" if allowed else "")
            )
        value = values[-1]
        if name in _BOOLEANS:
            parsed[name] = _boolean(name, value)
        elif name in _INTEGERS:
            try:
                parsed[name] = int(value)
            except ValueError:
                raise ConfigurationError(f"store URL option {name}={value!r} is not an integer") from None
        else:
            parsed[name] = value
    return MultiHostURL(
        scheme=parts.scheme,
        hosts=hosts,
        path=unquote(parts.path),
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=tls,
        options=parsed,
    )
