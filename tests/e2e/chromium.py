"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

No WebSocket client and no port: the browser reads commands on fd 3 and writes replies on fd 4,
each a JSON message ending in a NUL byte. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["Chromium", "chromium_binary"]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]


def chromium_binary() -> str | None:
    """$CHROMIUM, else `chromium` (Debian) or `chromium-browser` on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _above_9(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Chromium:
    """One headless browser; `fetch_from(page_url, expression)` runs a script on a real page."""

    def __init__(self, binary: str, *, host_rules: str, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="tav-chromium-"))
        self.log = self.profile / "stderr.log"
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Above 9, so that moving them onto fds 3 and 4 cannot clobber one with the other.
        to_browser_r = _above_9(to_browser_r)
        from_browser_w = _above_9(from_browser_w)
        args = [
            *FLAGS,
            f"--user-data-dir={self.profile / 'profile'}",
            f"--host-resolver-rules={host_rules}",
            "about:blank",
        ]
        # The protocol pipe must be fds 3 and 4 in the browser; bash (dash takes one-digit fds only)
        # moves them there.
        redirect = (
            f'exec "$0" "$@" 3<&{to_browser_r} {to_browser_r}<&- 4>&{from_browser_w} {from_browser_w}>&-'
        )
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["/bin/bash", "-c", redirect, binary, *args],
                pass_fds=(to_browser_r, from_browser_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------- protocol

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while True:
            end = self._buffer.find(b"\0")
            if end != -1:
                message: dict[str, Any] = json.loads(self._buffer[:end])
                self._buffer = self._buffer[end + 1 :]
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"chromium did not answer in time; its log: {self.log_tail()}")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the protocol pipe; its log: {self.log_tail()}")
                self._buffer += chunk

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """Send one command and wait for its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            reply = self._read_message(deadline)
            if "method" in reply:
                self._events.append(reply)

    # ------------------------------------------------------------------------- use

    def run_on_page(self, url: str, expression: str) -> Any:
        """Open `url` in a fresh tab, wait for its load event, then evaluate `expression` there
        (awaiting it if it is a promise) and return its value."""
        value, _ = self.run_on_page_watching(url, expression, watch=None)
        return value

    def run_on_page_watching(
        self, url: str, expression: str, *, watch: str | None
    ) -> tuple[Any, list[dict[str, str]]]:
        """`run_on_page`, also returning the headers the browser sent with each request (a CORS
        preflight included) to URLs starting with `watch`."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable", session=session)
            if watch is not None:
                self.call("Network.enable", session=session)
            navigation = self.call("Page.navigate", {"url": url}, session)
            if navigation.get("errorText"):
                raise RuntimeError(f"navigating to {url}: {navigation['errorText']}")
            self.wait_event("Page.loadEventFired", session)
            result = self.call(
                "Runtime.evaluate",
                {"expression": expression, "awaitPromise": True, "returnByValue": True},
                session,
            )
            if "exceptionDetails" in result:
                raise RuntimeError(f"{expression} on {url}: {result['exceptionDetails']}")
            sent = [] if watch is None else self._sent_headers(session, watch)
            return result["result"].get("value"), sent
        finally:
            self.call("Target.closeTarget", {"targetId": target})
            self._events.clear()

    def _sent_headers(self, session: str, watch: str) -> list[dict[str, str]]:
        # The headers actually sent arrive in separate ...ExtraInfo events, possibly after the
        # script has its response: wait (bounded) until every watched request has them.
        deadline = time.monotonic() + self.timeout
        while True:
            ids: list[str] = []
            headers: dict[str, dict[str, str]] = {}
            for event in self._events:
                if event.get("sessionId") != session:
                    continue
                params = event["params"]
                if event["method"] == "Network.requestWillBeSent" and params["request"]["url"].startswith(
                    watch
                ):
                    ids.append(params["requestId"])
                elif event["method"] == "Network.requestWillBeSentExtraInfo":
                    headers[params["requestId"]] = params["headers"]
            if ids and all(i in headers for i in ids):
                return [headers[i] for i in ids]
            reply = self._read_message(deadline)
            if "method" in reply:
                self._events.append(reply)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                    self.call("Browser.close")
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=5)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self.profile, ignore_errors=True)
