"""Admin operations, through the `Admin` API and the `validator-admin` CLI (in process or as a
subprocess), each held to docs/behaviour.md's outcome; init, export and restore; the CLI's `check` and
`show` held to what a validator would do."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.model import spec
from tests.model.base import (
    ADMIN_TOKENS,
    CLIENT_IPS,
    FRONT_NAMES,
    ISSUED,
    REQUEST_TOKENS,
    RESTRICTIONS,
    TOKENS,
    VIA,
    Base,
)
from validator.admin import ImportLine
from validator.errors import (
    ConfigurationError,
    InvalidEntry,
    LimitExceeded,
    StoreNotInitialised,
    StoreUnavailable,
)
from validator.model import Mode, Restrictions

# Entries worth making temporary (as typed: keys of `spec.DOMAIN_INPUTS` / `spec.IP_INPUTS`),
# ones the requests of `spec.FRONTS` / `spec.CLIENT_IPS` match.
EXPIRING_DOMAINS = ["app.example.com", "*.example.org", "https://Shop.Example.com/path", "x.example.org"]
EXPIRING_IPS = ["203.0.113.7", "198.51.100.0/24", "2606:4700::1111", "8.8.8.8"]
assert all(spec.DOMAIN_INPUTS.get(e) for e in EXPIRING_DOMAINS)
assert all(spec.IP_INPUTS.get(e) for e in EXPIRING_IPS)
# How far ahead (seconds) of the validators' wall clock ("model") or of the real one ("store").
EXPIRY_AHEAD = {"model": [0.3, 1.0, 2.0, 4.0, 60.0], "store": [0.5, 1.5, 3.0]}


def _instant(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


class AdminRules(Base):
    """Admin operations and the CLI's read commands."""

    # ---------------------------------------------------------------------------------- running an op

    async def _api(self, op: spec.Op) -> tuple[str, Restrictions | None]:
        """Run `op` through `Admin`: the outcome, and the record the API reports."""
        a = self.admin
        try:
            result: Any
            if op.kind in ("add", "remove", "set", "clear"):
                name = {"add": "add_", "remove": "remove_", "set": "set_", "clear": "clear_"}[op.kind]
                method = getattr(a, name + ("domains" if op.restriction == "domain" else "ips"))
                if op.kind == "clear":
                    result = await method(op.token)
                elif op.expires_at is not None:
                    result = await method(op.token, list(op.entries), expires_at=_instant(op.expires_at))
                else:
                    result = await method(op.token, list(op.entries))
            elif op.kind in ("enable", "disable"):
                result = await getattr(a, op.kind)(op.token, op.restriction)
            elif op.kind == "mode":
                result = await a.set_mode(op.token, "report" if op.report else "enforce")
            elif op.kind == "delete":
                result = await a.delete(op.token)
            else:
                assert op.put is not None
                domain_on, ip_on, domains, ips, report = op.put
                result = await a.put(
                    op.token,
                    Restrictions(
                        domain_enabled=domain_on,
                        ip_enabled=ip_on,
                        domains=list(domains),
                        ips=list(ips),
                        mode=Mode.REPORT if report else Mode.ENFORCE,
                    ),
                )
        except Exception as error:
            return self._outcome_of(error), None
        if isinstance(result, bool):
            return "ok", None
        restrictions = getattr(result, "restrictions", None)
        if restrictions is None and result.changed is False:
            return "noop", None
        return "ok", restrictions

    def _outcome_of(self, error: BaseException) -> str:
        if isinstance(error, StoreNotInitialised):
            return "uninitialised"
        if isinstance(error, InvalidEntry):
            return "invalid"
        if isinstance(error, LimitExceeded):
            return "limit"
        if isinstance(error, ConfigurationError):
            return "evicting"
        if isinstance(error, StoreUnavailable):
            return "unavailable"
        self.fail("ERROR", f"the admin API raised {error!r}: not an error of the library's own")
        return "error"

    def _cli_args(self, op: spec.Op, path: Path) -> list[str]:
        plural = "domains" if op.restriction == "domain" else "ips"
        match op.kind:
            case "add" | "remove" | "set":
                until = [] if op.expires_at is None else ["--until", _instant(op.expires_at).isoformat()]
                # After the entries, as the README writes it: `set TOKEN --until T ENTRY` is refused
                # as a usage error (argparse gives `set`'s optional entries nothing before --until).
                return [plural, op.kind, op.token, *op.entries, *until]
            case "clear":
                return [plural, "clear", op.token]
            case "enable" | "disable":
                assert op.restriction is not None
                return [op.kind, op.token, op.restriction]
            case "mode":
                return ["mode", op.token, "report" if op.report else "enforce"]
            case "delete":
                return ["delete", op.token]
            case _:
                assert op.put is not None
                domain_on, ip_on, domains, ips, report = op.put
                line = {
                    "token": op.token,
                    "domain_enabled": domain_on,
                    "ip_enabled": ip_on,
                    "domains": list(domains),
                    "ips": list(ips),
                    "mode": "report" if report else "enforce",
                }
                path.write_text(json.dumps(line) + "\n", encoding="utf-8")
                return ["import", str(path)]

    async def admin_op(self, op: spec.Op, via: str) -> None:
        token = op.token
        if token in self.model.corrupt and op.kind != "delete":
            return  # a hand-corrupted record: only `delete` (or a repair by hand) is modelled
        before = [self._link(seat) for seat in self.seats]
        reported: Restrictions | None = None
        # The Redis server's clock, read by the write somewhere in between (see `spec.plans`).
        redis_between = (time.time() * 1000, 0.0)
        if via == "api":
            outcome, reported = await self._api(op)
            outcomes = frozenset({outcome})
        else:
            result = await self.cli(
                via, self._cli_args(op, self.world.scratch / f"put-{uuid.uuid4().hex}.jsonl")
            )
            outcomes = self._kinds_of_exit(result.code)
            if result.code not in (0, 1, 2, 3):
                self.fail(
                    "ERROR", f"`validator-admin` exited {result.code} for {op.describe()}:\n{result.err}"
                )
        redis_between = (redis_between[0], time.time() * 1000)
        current = self.model.stored.get(token)
        plan = spec.plans(op, current, up=self.up, marked=self.model.marked, redis_between=redis_between)
        delivered = await self._sync_all(before)
        agreed = outcomes & plan.outcomes
        if not agreed:
            self.diverge(
                f"{op.describe()} via {via}: the product's outcome {sorted(outcomes)} is not behaviour.md's "
                f"{sorted(plan.outcomes)} (stored before: {spec.describe(self.model.stored.get(token))}, "
                f"marked={self.model.marked}, up={self.up})",
                {token},
            )
            return
        self.count(f"admin {'/'.join(sorted(agreed))}")
        if op.expires_at is not None:
            self.count(f"admin {'/'.join(sorted(agreed))} with an expiry")
        if agreed == {"ok"}:
            after = plan.after_for(agreed)
            self.model.write(token, after, delivered, self.now())
            if op.kind == "delete":
                self.model.corrupt.pop(token, None)
            # Lapsed by the server's clock: swept, or not yet (an entry whose instant fell during
            # the call), either being right.
            if (
                reported is not None
                and self.strict
                and _record(reported).pruned(redis_between[1]) != spec.pruned(after, redis_between[1])
            ):
                self.fail(
                    "ADMIN",
                    f"{op.describe()}: the API reports {_record(reported).describe()}, "
                    f"docs/behaviour.md says {spec.describe(after)} (entries lapsed by "
                    f"{spec.clock_text(redis_between[1])} left out)",
                )

    # ---------------------------------------------------------------------------------- rules: admin

    @precondition(lambda self: not self.world.frozen)
    @rule(
        data=st.data(),
        via=VIA,
        token=ADMIN_TOKENS,
        restriction=RESTRICTIONS,
        action=st.sampled_from(["add", "add", "remove", "set", "clear"]),
    )
    def change_list(self, data: st.DataObject, via: str, token: str, restriction: str, action: str) -> None:
        """domains/ips add, remove, set, clear."""
        if action == "remove":
            pool = spec.DOMAIN_VALID if restriction == "domain" else list(spec.IP_REMOVALS)
        elif restriction == "domain":
            pool = spec.DOMAIN_VALID * 3 + ([] if "hostile-domains" in self.skip else spec.DOMAIN_HOSTILE)
        else:
            pool = spec.IP_VALID * 4 + self._hostile_ips()
        size = (0, 7) if action == "set" else (1, 3)
        entries = (
            ()
            if action == "clear"
            else tuple(data.draw(st.lists(st.sampled_from(pool), min_size=size[0], max_size=size[1])))
        )
        expires_at = self._draw_expiry(data) if action in ("add", "set") and entries else None
        op = spec.Op(action, token, restriction, entries, expires_at=expires_at)  # type: ignore[arg-type]
        self.step(self._guarded(op, via))

    def _draw_expiry(self, data: st.DataObject) -> int | None:
        """None (permanent) mostly, else an instant a short way ahead of the validators' wall
        clock ("model": it lapses for them after a `time_passes` or two), or of the real one
        ("store": the Redis server's clock reaches it within the sequence and sweeps it; it may
        already have lapsed for the validators, whose clock runs ahead)."""
        if "expiry" in self.skip:
            return None
        anchor = data.draw(st.sampled_from(["none", "none", "model", "model", "store"]), label="expiry")
        if anchor == "none":
            return None
        ahead = data.draw(st.sampled_from(EXPIRY_AHEAD[anchor]), label="ahead (s)")
        base = self.clock.wall() if anchor == "model" else time.time()
        # Whole quarter seconds: exact in binary, so the product's ms equal the model's.
        return math.ceil((base + ahead) * 4) * 250

    @precondition(lambda self: not self.world.frozen and "expiry" not in self.skip)
    @rule(data=st.data(), via=VIA, token=st.sampled_from(ISSUED), enable=st.booleans())
    def add_expiring_domains(self, data: st.DataObject, via: str, token: str, enable: bool) -> None:
        """`domains add TOKEN ENTRY --until T` / `add_domains(..., expires_at=T)`, T a short way
        ahead, entries that requests match; the restriction switched on first, one time in two."""
        self._expiring(data, via, token, "domain", enable)

    @precondition(lambda self: not self.world.frozen and "expiry" not in self.skip)
    @rule(data=st.data(), via=VIA, token=st.sampled_from(ISSUED), enable=st.booleans())
    def add_expiring_ips(self, data: st.DataObject, via: str, token: str, enable: bool) -> None:
        """`ips add TOKEN ENTRY --until T` / `add_ips(..., expires_at=T)`: as for domains."""
        self._expiring(data, via, token, "ip", enable)

    def _expiring(self, data: st.DataObject, via: str, token: str, restriction: str, enable: bool) -> None:
        pool = EXPIRING_DOMAINS if restriction == "domain" else EXPIRING_IPS
        entries = tuple(data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True)))
        expires_at = None
        while expires_at is None:
            expires_at = self._draw_expiry(data)
        op = spec.Op("add", token, restriction, entries, expires_at=expires_at)  # type: ignore[arg-type]
        self.step(self._add_expiring(op, via, enable))

    async def _add_expiring(self, op: spec.Op, via: str, enable: bool) -> None:
        if enable:
            await self._guarded(spec.Op("enable", op.token, op.restriction), "api")
        await self._guarded(op, via)

    def _hostile_ips(self) -> list[str]:
        return [
            entry for entry in spec.IP_HOSTILE if ("zone" if "%" in entry else "hostile-ips") not in self.skip
        ]

    async def _guarded(self, op: spec.Op, via: str) -> None:
        if not spec.is_token(op.token) and "nonascii" in self.skip:
            return
        if "unmarked-writes" in self.skip and not self.model.marked:
            return
        if (
            "noop-ops" in self.skip
            and self.model.stored.get(op.token) is None
            and op.kind in ("remove", "clear", "disable", "mode", "set")
        ):
            return
        await self.admin_op(op, via)

    @precondition(lambda self: not self.world.frozen)
    @rule(via=VIA, token=ADMIN_TOKENS, restriction=RESTRICTIONS, on=st.booleans())
    def switch(self, via: str, token: str, restriction: str, on: bool) -> None:
        """enable / disable."""
        self.step(self._guarded(spec.Op("enable" if on else "disable", token, restriction), via))  # type: ignore[arg-type]

    @precondition(lambda self: not self.world.frozen)
    @rule(via=VIA, token=ADMIN_TOKENS, report=st.booleans())
    def mode(self, via: str, token: str, report: bool) -> None:
        self.step(self._guarded(spec.Op("mode", token, report=report), via))

    @precondition(lambda self: not self.world.frozen)
    @rule(via=VIA, token=ADMIN_TOKENS)
    def delete(self, via: str, token: str) -> None:
        self.step(self._guarded(spec.Op("delete", token), via))

    @precondition(lambda self: not self.world.frozen)
    @rule(data=st.data(), via=st.sampled_from(["api", "api", "cli"]), token=ADMIN_TOKENS)
    def put(self, data: st.DataObject, via: str, token: str) -> None:
        """A whole record: `Admin.put`, or a one-line `validator-admin import`."""
        domains = data.draw(
            st.lists(st.sampled_from(spec.DOMAIN_VALID * 4 + spec.DOMAIN_HOSTILE), max_size=3)
        )
        ips = data.draw(st.lists(st.sampled_from(spec.IP_VALID * 6 + spec.IP_HOSTILE), max_size=6))
        if "hostile-domains" in self.skip:
            domains = [d for d in domains if d in spec.DOMAIN_VALID]
        ips = [i for i in ips if i in spec.IP_VALID or i in self._hostile_ips()]
        record = (
            data.draw(st.booleans()),
            data.draw(st.booleans()),
            tuple(domains),
            tuple(ips),
            data.draw(st.booleans()),
        )
        self.step(self._guarded(spec.Op("put", token, put=record), via))

    @precondition(lambda self: not self.world.frozen)
    @rule(via=VIA, force=st.booleans())
    def init(self, via: str, force: bool) -> None:
        """`init` (forced or not); only it, or the end of a restore, marks a store."""
        self.step(self._init(via, force and "force" not in self.skip))

    async def _init(self, via: str, force: bool) -> None:
        if not self.up:
            expected = {"unavailable"}
        elif self.model.evicting and not force:
            expected = {"evicting"}
        else:
            expected = {"ok"}
        before = [self._link(seat) for seat in self.seats]
        if via == "api":
            try:
                await self.admin.init(force=force)
                outcomes = frozenset({"ok"})
            except Exception as error:
                outcomes = frozenset({self._outcome_of(error)})
        else:
            result = await self.cli(via, ["init", "--force"] if force else ["init"])
            outcomes = self._kinds_of_exit(result.code)
        await self._sync_all(before)
        if not outcomes & expected:
            self.diverge(
                f"init{' --force' if force else ''} via {via}: outcome {sorted(outcomes)}, behaviour.md says "
                f"{sorted(expected)} (evicting={self.model.evicting}, up={self.up})",
                set(),
            )
            if "ok" not in outcomes:
                return
        if "ok" in outcomes:
            self.count("init")
            self.model.mark(self.now())

    @precondition(lambda self: self.serving and not self.model.marked)
    @rule(via=VIA, data=st.data())
    def recover_store(self, via: str, data: st.DataObject) -> None:
        """An operator answers a wiped (or new) store: a restore from an export, or `init`."""
        answers = ["init", "restore"] if self.exports else ["init"]
        if data.draw(st.sampled_from(answers), label="answer") == "restore":
            index = data.draw(st.integers(0, len(self.exports) - 1), label="export")
            self.step(self._restore(via, index, False))
        else:
            self.step(self._init(via, False))

    @precondition(lambda self: not self.world.frozen)
    @rule(via=VIA)
    def export(self, via: str) -> None:
        self.step(self._export(via))

    async def _export(self, via: str) -> None:
        if self.model.corrupt and "export-corrupt" in self.skip:
            return
        path = self.world.scratch / f"export-{uuid.uuid4().hex}.jsonl"
        started_ms = time.time() * 1000  # lapsed entries are not exported (by the real clock)
        if via == "api":
            try:
                records = [r async for r in self.admin.export()]
            except Exception as error:
                outcomes = frozenset({self._outcome_of(error)})
            else:
                lines = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
                await asyncio.to_thread(path.write_bytes, lines)
                outcomes = frozenset({"ok"})
        else:
            outcomes = self._kinds_of_exit((await self.cli(via, ["export", str(path)])).code)
        if not self.up or self.model.corrupt:
            expected = {"unavailable"}
        elif not self.model.marked:
            expected = {"ok", "unavailable", "uninitialised"}
        else:
            expected = {"ok"}
        if not outcomes & expected:
            self.diverge(f"export via {via}: outcome {sorted(outcomes)}, expected {sorted(expected)}", set())
            return
        if "ok" not in outcomes:
            if path.exists():
                self.fail("ADMIN", f"a failed export via {via} left a file behind")
            return
        snapshot = self._read_export(path)
        if snapshot is None:
            return
        self.count("export")
        if self.strict and not self.diverged and not self.diverged_store:
            # An entry that lapsed during the export may be in it or not: compared without those.
            done_ms = time.time() * 1000
            stored = {t: r.pruned(done_ms) for t, r in self.model.stored.items() if r is not None}
            exported = {t: spec.pruned(r, done_ms) for t, r in snapshot.items()}
            lapsed = {t: r for t, r in snapshot.items() if r is not None and r.pruned(started_ms) != r}
            if exported != stored or lapsed:
                self.fail(
                    "ADMIN",
                    f"the export differs from the store: exported {_show(snapshot)}, stored "
                    f"{_show(self.model.stored)} (entries lapsed by {spec.clock_text(done_ms)} left out"
                    f"{'; exported entries already lapsed: ' + _show(lapsed) if lapsed else ''})",
                )
        self.exports.append((path, snapshot))

    def _read_export(self, path: Path) -> dict[str, spec.State] | None:
        by_hash = {self.admin.store.token_hash(t): t for t in TOKENS}
        snapshot: dict[str, spec.State] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            token = by_hash.get(item.get("hash", ""))
            if token is None:
                self.diverge(f"the export holds a record of no token the test wrote: {item}", None)
                return None
            snapshot[token] = spec.Record(
                bool(item["domain_enabled"]),
                bool(item["ip_enabled"]),
                frozenset(item["domains"]),
                frozenset(spec.canonical_ip_entry(ip) for ip in item["ips"]),
                item.get("mode") == "report",
                frozenset((entry, int(at)) for entry, at in item.get("domain_expiry", {}).items()),
                frozenset(
                    (spec.canonical_ip_entry(ip), int(at)) for ip, at in item.get("ip_expiry", {}).items()
                ),
            )
        return snapshot

    @precondition(lambda self: not self.world.frozen and bool(self.exports))
    @rule(via=st.sampled_from(["api", "cli", "subprocess"]), data=st.data(), force=st.booleans())
    def restore(self, via: str, data: st.DataObject, force: bool) -> None:
        """Restore an earlier export: records first, the marker after the last one."""
        index = data.draw(st.integers(0, len(self.exports) - 1), label="export")
        self.step(self._restore(via, index, force and "force" not in self.skip))

    async def _restore(self, via: str, index: int, force: bool) -> None:
        if self.model.corrupt:
            return
        path, snapshot = self.exports[index]
        if not self.up:
            expected = {"unavailable"}
        # On a marked store a restore is a plain import: writes are not refused for the policy.
        elif self.model.evicting and not force and not self.model.marked:
            expected = {"evicting"}
        else:
            expected = {"ok"}
        before = [self._link(seat) for seat in self.seats]
        if via == "api":
            outcomes = frozenset({await self._api_restore(path, force)})
        else:
            outcomes = await self._cli_restore(via, path, force)
        await self._sync_all(before)
        if not outcomes & expected:
            self.diverge(f"restore via {via}: outcome {sorted(outcomes)}, expected {sorted(expected)}", None)
            return
        if "ok" in outcomes:
            self.count("restore")
            self.model.restore(snapshot, self.now())

    async def _api_restore(self, path: Path, force: bool) -> str:
        try:
            text = await asyncio.to_thread(path.read_bytes)
            batch = [
                self.admin.prepare(msgspec.json.decode(line, type=ImportLine)) for line in text.splitlines()
            ]
            async for _ in self.admin.restore([batch], force=force):
                pass
        except Exception as error:
            return self._outcome_of(error)
        return "ok"

    async def _cli_restore(self, via: str, path: Path, force: bool) -> frozenset[str]:
        args = ["import", "--restore", str(path), *(["--force"] if force else [])]
        return self._kinds_of_exit((await self.cli(via, args)).code)

    # ---------------------------------------------------------------------------------- rules: CLI truth

    @precondition(lambda self: not self.world.frozen and "cli-truth" not in self.skip)
    @rule(
        via=st.sampled_from(["cli", "cli", "cli", "subprocess"]),
        token=REQUEST_TOKENS,
        front=FRONT_NAMES,
        client_ip=CLIENT_IPS,
        deny_unknown=st.booleans(),
    )
    def cli_check(self, via: str, token: str, front: str, client_ip: str, deny_unknown: bool) -> None:
        """`validator-admin check` must say what a validator would do."""
        if not spec.is_token(token) and "nonascii" in self.skip:
            return
        self.step(self._cli_check(via, token, spec.FRONT_BY_NAME[front], client_ip, deny_unknown))

    def _sound_for(self, token: str) -> bool:
        return self.up and self.model.marked and token not in self.model.corrupt

    async def _cli_check(
        self, via: str, token: str, front: spec.Front, client_ip: str, deny_unknown: bool
    ) -> None:
        args = ["check", token]
        if front.origin is not None:
            args += ["--origin", front.origin]
        if front.referer is not None:
            args += ["--referer", front.referer]
        if front.sec_fetch:
            args.append("--sec-fetch")
        if client_ip:
            args += ["--ip", client_ip]
        if deny_unknown:
            args.append("--deny-unknown")
        # Entries lapse for `check` by its process's wall clock: in process the validators'
        # (moved), in a subprocess the real one; somewhere between these two readings of it.
        offset = 0.0 if via == "subprocess" else self.clock.offset
        window = [(time.time() + offset) * 1000]
        result = await self.cli(via, args)
        window.append((time.time() + offset) * 1000)
        state = self.model.stored.get(token)
        if not spec.is_token(token):
            expected = {1, 2}
        elif not self._sound_for(token):
            expected = {3}
        else:
            enforced = state if state is None else dataclasses.replace(state, report=False)
            expected = set()
            for at in window:
                rules_allow = spec.allows(
                    enforced, front, client_ip, unknown_allowed=not deny_unknown, now_ms=at
                )
                expected |= {0} if rules_allow else ({0, 1} if state is not None and state.report else {1})
        if token in self.diverged or self.diverged_store:
            return
        if result.code not in expected:
            self.diverge(
                f"`validator-admin {' '.join(args)}` exited {result.code}, a validator would give "
                f"{sorted(expected)} (stored {spec.describe(state)}, marked={self.model.marked}, "
                f"corrupt={token in self.model.corrupt}): {result.out.strip()[-300:]} "
                f"{result.err.strip()[-300:]}",
                set(),
            )

    @precondition(lambda self: not self.world.frozen and "cli-truth" not in self.skip)
    @rule(via=st.sampled_from(["cli", "cli", "cli", "subprocess"]), token=REQUEST_TOKENS)
    def cli_show(self, via: str, token: str) -> None:
        if not spec.is_token(token) and "nonascii" in self.skip:
            return
        self.step(self._cli_show(via, token))

    async def _cli_show(self, via: str, token: str) -> None:
        result = await self.cli(via, ["show", token])
        if not spec.is_token(token):
            expected = {1, 2}
        elif not self._sound_for(token):
            expected = {3}
        else:
            expected = {0, 1}
        if result.code not in expected and token not in self.diverged and not self.diverged_store:
            self.diverge(
                f"`validator-admin show` exited {result.code}, expected {sorted(expected)} "
                f"(marked={self.model.marked}, corrupt={token in self.model.corrupt}, up={self.up}): "
                f"{result.out.strip()[-300:]}",
                set(),
            )


def _record(r: Restrictions) -> spec.Record:
    return spec.Record(
        r.domain_enabled,
        r.ip_enabled,
        frozenset(r.domains),
        frozenset(spec.canonical_ip_entry(ip) for ip in r.ips),
        r.mode is Mode.REPORT,
        frozenset(r.domain_expiry.items()),
        frozenset((spec.canonical_ip_entry(ip), at) for ip, at in r.ip_expiry.items()),
    )


def _show(records: Mapping[str, spec.State]) -> str:
    return "{" + ", ".join(f"{t!r}: {spec.describe(r)}" for t, r in sorted(records.items())) + "}"
