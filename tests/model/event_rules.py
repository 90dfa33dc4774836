"""Store events (SIGKILL with or without data, SIGSTOP, FLUSHALL, the invalidation link cut,
hand-corrupted records, the eviction policy), time passing, validators restarting, and the rare
slow ones: a mistyped store URL, the demo's access log."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.model.base import ISSUED, SLOW_STEP, Base
from tests.model.harness import (
    TIMING,
    run_cli_subprocess,
)
from tests.redis_servers import free_port
from validator.store.invalidation import CLIENT_NAME


class EventRules(Base):
    # ---------------------------------------------------------------------------------- rules: store events

    @rule(data=st.data())
    def outage(self, data: st.DataObject) -> None:
        """One of the ways a store fails, as it applies now: SIGKILL with or without a SAVE
        first (it comes back with its data or empty), a restart either way, FLUSHALL, SIGSTOP,
        SIGCONT, a start after a kill. One rule for all, so that the store is mostly healthy."""
        if self.world.frozen:
            kinds = ["sigcont", "kill, data lost", "restart empty"]
        elif self.up:
            kinds = ["kill, data saved", "kill, data lost", "restart with data", "restart empty"]
            kinds += ["flushall", "sigstop"]
        else:
            kinds = ["start"]
        kind = data.draw(st.sampled_from(kinds), label="outage")
        self.step(self._outage(kind))

    @precondition(lambda self: not self.up or self.world.frozen)
    @rule()
    def recover_server(self) -> None:
        """The server comes back (after a kill) or goes on (after SIGSTOP)."""
        self.step(self._outage("start" if not self.up else "sigcont"))

    async def _outage(self, kind: str) -> None:
        self.count(kind)
        if kind == "start":
            await self._start()
        elif kind == "sigcont":
            await self._signal(signal.SIGCONT)
        elif kind == "sigstop":
            await self._signal(signal.SIGSTOP)
        elif kind == "flushall":
            await self._raw("FLUSHALL")
            self.model.wipe()
        else:
            await self._kill(save_first=kind in ("kill, data saved", "restart with data"))
            if kind.startswith("restart"):
                await self._start()

    async def _kill(self, save_first: bool) -> None:
        saved = False
        if save_first and self.serving:
            await self._raw("SAVE")
            saved = True
        else:
            self.world.server.discard_data()
        self.world.server.kill()
        self.world.frozen = False
        self.model.persisted = saved

    async def _start(self) -> None:
        if not self.model.persisted:
            self.world.server.discard_data()
        self.world.server.start()
        self.model.evicting = False  # CONFIG SET does not survive a restart
        if not self.model.persisted:
            self.model.wipe()

    async def _signal(self, sig: signal.Signals) -> None:
        self.world.server.signal(sig)
        self.world.frozen = sig == signal.SIGSTOP
        await asyncio.sleep(0.01)

    @precondition(lambda self: self.serving)
    @rule(every=st.booleans())
    def kill_invalidation_link(self, every: bool) -> None:
        """CLIENT KILL the invalidation connection (the one in tracking / subscribed mode)."""
        self.step(self._kill_links(every))

    async def _kill_links(self, every: bool) -> None:
        clients = await self._raw("CLIENT", "LIST")
        ids: list[str] = []
        for line in str(clients).splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("name") == CLIENT_NAME or "P" in fields.get("flags", ""):
                ids.append(fields["id"])
        for client_id in ids if every else ids[:1]:
            await self._raw("CLIENT", "KILL", "ID", client_id)
            self.count("invalidation link cut")

    @precondition(lambda self: self.serving and "corrupt" not in self.skip)
    @rule(token=st.sampled_from(ISSUED), how=st.sampled_from(["version", "wrongtype"]))
    def corrupt(self, token: str, how: str) -> None:
        """A hand-edited record: a version that is no integer, or a list key of the wrong type."""
        self.step(self._corrupt(token, how))

    async def _corrupt(self, token: str, how: str) -> None:
        if self.model.stored.get(token) is None or token in self.model.corrupt:
            return
        meta, domains, _ = self.admin.store.keys(self.admin.store.token_hash(token))
        if how == "version":
            await self._raw("HSET", meta, "v", "x")
        else:
            await self._raw("DEL", domains)
            await self._raw("SET", domains, "x")
        self.model.corrupt[token] = how
        self.count(f"corrupt ({how})")

    @precondition(lambda self: self.serving and bool(self.model.corrupt))
    @rule(data=st.data())
    def repair(self, data: st.DataObject) -> None:
        """The operator puts the hand-edited value back."""
        token = data.draw(st.sampled_from(sorted(self.model.corrupt)), label="token")
        self.step(self._repair(token))

    async def _repair(self, token: str) -> None:
        meta, domains, _ = self.admin.store.keys(self.admin.store.token_hash(token))
        if self.model.corrupt.pop(token) == "version":
            await self._raw("HSET", meta, "v", "1")
            return
        await self._raw("DEL", domains)
        record = self.model.stored.get(token)
        if record is not None:
            # Not those lapsed by now: Redis may have swept them (and their instant with them).
            record = record.pruned(time.time() * 1000)
        if record is not None and record.domains:
            await self._raw("SADD", domains, *sorted(record.domains))

    @precondition(lambda self: self.serving and "eviction" not in self.skip)
    @rule(policy=st.sampled_from(["allkeys-lru", "allkeys-random", "volatile-lru", "noeviction"]))
    def eviction_policy(self, policy: str) -> None:
        self.step(self._policy(policy))

    async def _policy(self, policy: str) -> None:
        await self._raw("CONFIG", "SET", "maxmemory-policy", policy)
        self.model.evicting = policy.startswith("allkeys")

    @rule(period=st.sampled_from(["breaker_reset", "incoherent_ttl", "ttl", "stale"]))
    def time_passes(self, period: str) -> None:
        """Beyond one of the periods (on the caches' and breakers' clock; really, if they take none)."""
        seconds = TIMING["ttl"] + TIMING["max_stale"] if period == "stale" else TIMING[period]
        self.step(self._pass(seconds + 0.05))

    @precondition(lambda self: self.started and not self.world.frozen)
    @rule(seat=st.integers(0, 1))
    def restart_validator(self, seat: int) -> None:
        """A validator process restarts (an empty cache); on an evicting store it logs an error."""
        self.step(self._restart_validator(seat))

    async def _restart_validator(self, seat: int) -> None:
        old = self.seats[seat]
        started = time.monotonic()
        await old.validator.close()
        closed = time.monotonic()
        self.logs.records.clear()
        self.seats[seat] = await self._new_seat(old.name, old.unknown)
        if time.monotonic() - started > SLOW_STEP:
            print(
                f"restart_validator: close {closed - started:.1f} s, start {time.monotonic() - closed:.1f} s "
                f"(up={self.up}, frozen={self.world.frozen})",
                file=sys.stderr,
            )
        self.model.seats[seat].older.clear()
        if self.model.evicting and self.serving and "eviction" not in self.skip:
            said = any(
                r.levelno >= 40
                and ("evict" in self.logs.text(r).lower() or "maxmemory" in self.logs.text(r).lower())
                for r in self.logs.records
            )
            if not said:
                self.diverge(
                    "a validator started on a store with maxmemory-policy allkeys-* and logged no error",
                    set(),
                )

    # ---------------------------------------------------------------------------------- rules: rare, slow

    @precondition(lambda self: self.runs["bad-url"] < 1 and "bad-url" not in self.skip)
    @rule(kind=st.sampled_from(["typo-scheme", "bad-db", "garbage-port", "closed-port"]))
    def bad_store_url(self, kind: str) -> None:
        """A mistyped store URL, or one at a port that does not speak Redis: one line, no traceback."""
        self.runs["bad-url"] += 1
        self.step(self._bad_url(kind))

    async def _bad_url(self, kind: str) -> None:
        port = self.world.server.port
        url = {
            "typo-scheme": f"redis:/127.0.0.1:{port}/0",
            "bad-db": f"redis://127.0.0.1:{port}/abc",
            "garbage-port": f"redis://127.0.0.1:{self.world.garbage.port}/0",
            "closed-port": f"redis://127.0.0.1:{free_port()}/0",
        }[kind]
        result = await run_cli_subprocess(self.world, ["--store", url, "show", ISSUED[0]])
        self._cli_hygiene(["--store", url, "show", "TOKEN"], result)
        expected = 2 if kind in ("typo-scheme", "bad-db") else 3
        lines = [line for line in result.err.splitlines() if line.strip()]
        if result.code != expected or len(lines) != 1:
            self.diverge(
                f"`validator-admin --store {url} show` exited {result.code} (expected {expected}), "
                f"{len(lines)} lines on stderr:\n{result.err}",
                set(),
            )

    @precondition(lambda self: self.serving and self.runs["demo"] < 1 and "demo" not in self.skip)
    @rule(go=st.integers(0, 2))
    def demo_access_log(self, go: int) -> None:
        """`python -m validator.web.demo --access-log` serves a request with a token: the log must
        not show it."""
        if go == 0:
            self.runs["demo"] += 1
            self.step(self._demo())

    async def _demo(self) -> None:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "validator.web.demo",
            "--store",
            self.world.url,
            "--port",
            str(port),
            "--access-log",
            "--no-seed",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.world.env,
        )
        token = ISSUED[0]
        try:
            status = b""
            started = time.monotonic()
            while time.monotonic() - started < 30 and process.returncode is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                request = (
                    f"GET /v1/hello?api_key={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                )
                writer.write(request.encode() + b"\r\n")
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), 10)
                writer.close()
                await writer.wait_closed()
                break
            await asyncio.sleep(0.2)  # the access line is written after the response
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            try:
                out, err = await asyncio.wait_for(process.communicate(), 15)
            except TimeoutError:
                process.kill()
                out, err = await process.communicate()
        text = (out + err).decode(errors="replace")
        if not status:
            self.fail("ERROR", f"the demo never answered:\n{text[-2000:]}")
        if token in text:
            shown = [line for line in text.splitlines() if token in line]
            self.fail("LEAK", f"the demo's access log shows the token in clear: {shown[:3]}")
