"""Every promise of docs/behaviour.md is a test, on every deployment it applies to.

Run as `python -m tests.promise_check` (`scripts/promises`, part of `scripts/check`). It reads the
promise lines of docs/behaviour.md (`- **P-SOME-ID** (deployments): statement.`), collects the
suite without running it (`pytest --collect-only`: no server starts) and prints one line per
problem, exiting 1 if there is any:

- a promise that no test names (`@pytest.mark.promise("P-SOME-ID")`);
- a promise that applies to a deployment (single, cluster, sentinel) with no test run on it;
- a test that names an id docs/behaviour.md does not define;
- a link to a promise docs/behaviour.md does not define (from the README, the changelog, a page of
  docs/, or within the document).

A test runs on a deployment when its parameters name it (the `backend` fixture's `standalone`,
`cluster`, `sentinel`; any parameter id holding `single`, `standalone`, `cluster` or `sentinel`)
or when one of the fixtures it uses, directly or not, is annotated to yield the processes of that
deployment (`RedisProcess` for a single server, `LocalCluster`, `LocalSentinel`).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ("single", "cluster", "sentinel")

# `- **P-SOME-ID** (single, cluster): statement.`, optionally followed by its anchor.
_PROMISE = re.compile(
    r"^- \*\*(?P<id>P-[A-Z0-9]+(?:-[A-Z0-9]+)*)\*\* \((?P<deployments>[a-z, ]+)\): (?P<statement>.+?)"
    r'(?: <a id="(?P<anchor>[^"]*)"></a>)?$'
)
_ID_LIKE = re.compile(r"^- \*\*P-")
# A Markdown link to a promise (`](docs/behaviour.md#P-ID)`, `](behaviour.md#P-ID)` from docs/),
# not a mention of the form in backquotes.
_PROMISE_LINK = re.compile(r"\]\((?:[\w./-]*/)?behaviour\.md#(P-[A-Za-z0-9-]+)\)")
_OWN_LINK = re.compile(r"\]\(#(P-[A-Za-z0-9-]+)\)")
# Words of a parameter id that name a deployment.
_PARAM_WORDS = {"standalone": "single", "single": "single", "cluster": "cluster", "sentinel": "sentinel"}
# What a fixture's return annotation holds when it starts a deployment's processes.
# The model test's worlds (tests/model) start a redis-server or a LocalCluster of their own.
_FIXTURE_TYPES = {
    "RedisProcess": "single",
    "LocalCluster": "cluster",
    "LocalSentinel": "sentinel",
    "World": "single",
    "ClusterWorld": "cluster",
}


@dataclass(frozen=True)
class Promise:
    id: str
    deployments: frozenset[str]  # empty: `any`
    line: int


@dataclass
class Coverage:
    """What the collected tests say: per promise id, the test ids and the deployments run on."""

    tests: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    deployments: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def parse_promises(text: str) -> tuple[list[Promise], list[str]]:
    """The promises of docs/behaviour.md's text, and the problems of its promise lines."""
    promises: list[Promise] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not _ID_LIKE.match(line):
            continue
        match = _PROMISE.match(line)
        if match is None:
            problems.append(f"docs/behaviour.md:{number}: not a promise line `- **P-ID** (deployments): ...`")
            continue
        pid = match["id"]
        words = {w.strip() for w in match["deployments"].split(",")}
        unknown = words - {*DEPLOYMENTS, "any"}
        if unknown or ("any" in words and len(words) > 1):
            problems.append(
                f"docs/behaviour.md:{number}: {pid}: deployments must be `any` or some of "
                f"{', '.join(DEPLOYMENTS)}, not {match['deployments']!r}"
            )
        if match["anchor"] is not None and match["anchor"] != pid:
            problems.append(f"docs/behaviour.md:{number}: {pid}: its anchor says {match['anchor']!r}")
        if pid in seen:
            problems.append(f"docs/behaviour.md:{number}: {pid} is defined twice")
        seen.add(pid)
        promises.append(Promise(pid, frozenset(words & set(DEPLOYMENTS)), number))
    return promises, problems


def item_deployments(params: Mapping[str, object], param_id: str, fixture_returns: Iterable[str]) -> set[str]:
    """The deployments one collected test runs on (the rule of the module docstring)."""
    found: set[str] = set()
    backend = params.get("backend")
    if isinstance(backend, str) and backend in _PARAM_WORDS:
        found.add(_PARAM_WORDS[backend])
    for word in re.split(r"[^a-z]+", param_id.lower()):
        if word in _PARAM_WORDS:
            found.add(_PARAM_WORDS[word])
    if backend is None:
        for annotation in fixture_returns:
            for name, deployment in _FIXTURE_TYPES.items():
                if re.search(rf"\b{name}\b", annotation):
                    found.add(deployment)
    return found


def problems_of(
    promises: list[Promise], coverage: Coverage, links: Iterable[tuple[str, str]] = ()
) -> list[str]:
    """One line per broken promise, test or link (`links`: the file that links, the id linked)."""
    problems: list[str] = []
    known = {p.id for p in promises}
    for promise in promises:
        where = f"docs/behaviour.md:{promise.line}"
        if not coverage.tests.get(promise.id):
            problems.append(f"{where}: {promise.id} has no test (@pytest.mark.promise({promise.id!r}))")
            continue
        for deployment in sorted(promise.deployments - coverage.deployments.get(promise.id, set())):
            problems.append(f"{where}: {promise.id} applies to {deployment} but no test of it runs there")
    for pid, tests in sorted(coverage.tests.items()):
        if pid not in known:
            problems.append(f"{tests[0]}: names {pid}, which docs/behaviour.md does not define")
    for where, pid in sorted(set(links)):
        if pid not in known:
            problems.append(f"{where}: links to {pid}, which docs/behaviour.md does not define")
    return problems


class _Collector:
    """A pytest plugin: records the promise markers and deployments of every collected test."""

    def __init__(self) -> None:
        self.coverage = Coverage()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            ids = [str(mark.args[0]) for mark in item.iter_markers("promise") if mark.args]
            if not ids:
                continue
            callspec: Any = getattr(item, "callspec", None)
            params = dict(callspec.params) if callspec is not None else {}
            param_id = callspec.id if callspec is not None else ""
            returns = []
            info: Any = getattr(item, "_fixtureinfo", None)
            for defs in info.name2fixturedefs.values() if info is not None else ():
                for fixture in defs:
                    annotation = getattr(fixture.func, "__annotations__", {}).get("return", "")
                    returns.append(str(annotation))
            deployments = item_deployments(params, param_id, returns)
            for pid in ids:
                self.coverage.tests[pid].append(item.nodeid)
                self.coverage.deployments[pid] |= deployments


def collect(paths: Iterable[str] = ("tests",)) -> Coverage:
    """Collect the suite (nothing runs, no server starts) and return what its markers say."""
    collector = _Collector()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = pytest.main(
            ["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *paths],
            plugins=[collector],
        )
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        sys.stderr.write(output.getvalue()[-4000:])
        raise SystemExit(f"promises: collecting the tests failed (pytest exit {int(code)})")
    return collector.coverage


def linking_documents() -> list[tuple[str, str]]:
    """(path, text) of the documents whose links to promises are checked: the README, the
    changelog and every page of the documentation site (docs/*.md)."""
    paths = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")) for path in paths]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args
    started = time.monotonic()
    document = (ROOT / "docs" / "behaviour.md").read_text()
    promises, problems = parse_promises(document)
    coverage = collect()
    links = [(where, pid) for where, text in linking_documents() for pid in _PROMISE_LINK.findall(text)]
    links += [("docs/behaviour.md", pid) for pid in _OWN_LINK.findall(document)]
    problems += problems_of(promises, coverage, links)
    for problem in problems:
        print(f"promises: {problem}")
    if verbose:
        for promise in promises:
            on = sorted(coverage.deployments.get(promise.id, set()))
            print(f"{promise.id}: {len(coverage.tests.get(promise.id, []))} tests, on {', '.join(on) or '-'}")
    per = {d: sum(d in p.deployments for p in promises) for d in DEPLOYMENTS}
    print(
        f"promises: {len(promises)} promises ({', '.join(f'{n} on {d}' for d, n in per.items())}), "
        f"{sum(map(len, coverage.tests.values()))} test citations, {len(problems)} problems, "
        f"{time.monotonic() - started:.1f} s"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
