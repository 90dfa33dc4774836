"""The promise checker of `scripts/check` (tests/promise_check.py): how it reads docs/behaviour.md's
promise lines, which deployments a collected test counts for, and the one line per problem."""

from __future__ import annotations

import pytest

from tests.promise_check import Coverage, Promise, item_deployments, parse_promises, problems_of

pytestmark = pytest.mark.timeout(30)

DOC = """# Behaviour

Some prose that is no promise. - **P-NOT-AT-LINE-START** (any): ignored.

- **P-PURE-RULE** (any): a rule whatever the deployment.
- **P-ON-ALL** (single, cluster, sentinel): held on every deployment. <a id="P-ON-ALL"></a>
- **P-CLUSTER-ONLY** (cluster): a Cluster's own.
"""


def test_promise_lines_are_read_with_their_deployments() -> None:
    promises, problems = parse_promises(DOC)
    assert problems == []
    assert promises == [
        Promise("P-PURE-RULE", frozenset(), 5),
        Promise("P-ON-ALL", frozenset({"single", "cluster", "sentinel"}), 6),
        Promise("P-CLUSTER-ONLY", frozenset({"cluster"}), 7),
    ]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("- **P-LOWER-case** (any): x.", "not a promise line"),
        ("- **P-NO-DEPLOYMENTS**: x.", "not a promise line"),
        ("- **P-X** (moon): x.", "deployments must be"),
        ("- **P-X** (any, cluster): x.", "deployments must be"),
        ('- **P-X** (any): x. <a id="P-Y"></a>', "its anchor says 'P-Y'"),
        ("- **P-X** (any): x.\n- **P-X** (any): y.", "P-X is defined twice"),
    ],
)
def test_a_malformed_promise_line_is_one_problem(line: str, says: str) -> None:
    _, problems = parse_promises(line)
    assert len(problems) == 1
    assert says in problems[0]
    assert problems[0].startswith("docs/behaviour.md:")


@pytest.mark.parametrize(
    ("params", "param_id", "returns", "expected"),
    [
        ({"backend": "standalone"}, "standalone", ["Iterator[Backend]"], {"single"}),
        ({"backend": "cluster"}, "cluster-x", ["Iterator[Backend]", "Iterator[LocalSentinel]"], {"cluster"}),
        ({}, "", ["AsyncIterator[str]", "Iterator[RedisProcess]"], {"single"}),
        ({}, "", ["Iterator[LocalCluster]"], {"cluster"}),
        ({}, "", ["Iterator[LocalSentinel]"], {"sentinel"}),
        ({}, "", ["Iterator[TLSRedisProcess]"], set()),  # a TLS server is no deployment kind here
        ({"profile": "sentinel"}, "sentinel-short", [], {"sentinel"}),
        ({}, "", ["None", "Iterator[World]"], {"single"}),  # the model test's world: a redis-server
        ({}, "", ["Iterator[ClusterWorld]"], {"cluster"}),
        ({}, "", ["Iterator[Worldly]"], set()),  # a type name that only starts like one
        ({"clusterless": "x"}, "clusterless", [], set()),  # a word, not a part of one
    ],
)
def test_the_deployments_a_test_runs_on(
    params: dict[str, object], param_id: str, returns: list[str], expected: set[str]
) -> None:
    assert item_deployments(params, param_id, returns) == expected


def coverage(**tests: tuple[list[str], set[str]]) -> Coverage:
    result = Coverage()
    for pid, (ids, deployments) in tests.items():
        result.tests[pid.replace("_", "-")] = ids
        result.deployments[pid.replace("_", "-")] = deployments
    return result


def test_every_kind_of_problem_is_one_line() -> None:
    promises, _ = parse_promises(DOC)
    found = coverage(
        P_ON_ALL=(["tests/a.py::test_x[standalone]", "tests/a.py::test_x[cluster]"], {"single", "cluster"}),
        P_CLUSTER_ONLY=(["tests/b.py::test_y"], {"cluster"}),
        P_UNKNOWN=(["tests/c.py::test_z"], set()),
    )
    links = [("README.md", "P-PURE-RULE"), ("README.md", "P-GONE"), ("docs/behaviour.md", "P-TYPO")]
    assert problems_of(promises, found, links) == [
        "docs/behaviour.md:5: P-PURE-RULE has no test (@pytest.mark.promise('P-PURE-RULE'))",
        "docs/behaviour.md:6: P-ON-ALL applies to sentinel but no test of it runs there",
        "tests/c.py::test_z: names P-UNKNOWN, which docs/behaviour.md does not define",
        "README.md: links to P-GONE, which docs/behaviour.md does not define",
        "docs/behaviour.md: links to P-TYPO, which docs/behaviour.md does not define",
    ]


def test_a_kept_promise_is_no_problem() -> None:
    promises, _ = parse_promises(DOC)
    found = coverage(
        P_PURE_RULE=(["tests/unit/t.py::test_rule"], set()),
        P_ON_ALL=(["tests/a.py::test_x"], {"single", "cluster", "sentinel"}),
        P_CLUSTER_ONLY=(["tests/b.py::test_y"], {"cluster", "single"}),
    )
    assert problems_of(promises, found, [("README.md", "P-ON-ALL")]) == []


def test_the_repository_keeps_its_promises_as_written() -> None:
    # The real document parses without a problem of its own (what the tests cite is checked by
    # `scripts/promises`, which collects the whole suite).
    from tests.promise_check import ROOT

    promises, problems = parse_promises((ROOT / "docs" / "behaviour.md").read_text())
    assert problems == []
    assert len(promises) >= 50


def test_the_pages_of_the_site_are_read_for_promise_links() -> None:
    # The manual moved from the README to docs/: its links to promises are checked where they are now.
    from tests.promise_check import _PROMISE_LINK, ROOT, linking_documents

    documents = dict(linking_documents())
    assert {"README.md", "CHANGELOG.md", "docs/outages.md", "docs/report-only.md"} <= set(documents)
    promises, _ = parse_promises((ROOT / "docs" / "behaviour.md").read_text())
    linked = {pid for text in documents.values() for pid in _PROMISE_LINK.findall(text)}
    assert "P-BREAKER" in linked  # docs/outages.md links to it
    assert linked <= {p.id for p in promises}
