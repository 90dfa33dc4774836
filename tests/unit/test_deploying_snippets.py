"""The proxy configurations the docs show are the files the tests run (docs/deploying/*), and
the two no server runs here (Traefik, Envoy) send the gate what it needs.

nginx.conf and Caddyfile are run by tests/e2e/test_gate_nginx.py and test_gate_caddy.py; the
headers Traefik and Envoy send are tested against the gate in tests/unit/test_gate.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "docs" / "deploying"
FILE_OF = {"nginx": ("nginx.conf",), "caddyfile": ("Caddyfile",), "yaml": ("traefik.yml", "envoy.yaml")}
# A line of only this in a shown excerpt stands for lines left out.
ELLIPSIS = "# ..."


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, text) of every fenced block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL)]


def lines(text: str) -> list[str]:
    """Non-blank lines without their indentation: an excerpt may be indented otherwise."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def excerpt_of(block: str, snippet: str) -> bool:
    """Whether `block` is `snippet` with runs of lines left out where it says `# ...`."""
    whole = lines(snippet)
    start = 0
    pieces: list[list[str]] = [[]]
    for line in lines(block):
        if line == ELLIPSIS:
            pieces.append([])
        else:
            pieces[-1].append(line)
    for piece in filter(None, pieces):
        for at in range(start, len(whole) - len(piece) + 1):
            if whole[at : at + len(piece)] == piece:
                start = at + len(piece)
                break
        else:
            return False
    return True


def shown() -> list[tuple[str, str, str]]:
    """(where, language, text) of every proxy configuration the docs show."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying behind a proxy") :]
    section = section[: section.index("\n## ", 1)]
    found = [("README.md", lang, text) for lang, text in code_blocks(section) if lang in FILE_OF]
    deploying = (ROOT / "docs" / "deploying.md").read_text()
    found += [("docs/deploying.md", lang, text) for lang, text in code_blocks(deploying) if lang in FILE_OF]
    return found


@pytest.mark.parametrize(("where", "lang", "text"), shown(), ids=lambda v: str(v)[:40])
def test_what_the_docs_show_is_a_snippet_file(where: str, lang: str, text: str) -> None:
    assert any(excerpt_of(text, (SNIPPETS / name).read_text()) for name in FILE_OF[lang]), where


def test_deploying_md_shows_every_snippet_whole() -> None:
    deploying = (ROOT / "docs" / "deploying.md").read_text()
    blocks = [text for _, text in code_blocks(deploying)]
    for path in sorted(SNIPPETS.iterdir()):
        assert path.read_text().rstrip() + "\n" in blocks, path.name


EXCERPT_CASES = [
    pytest.param("b\nc", True, id="a contiguous run"),
    pytest.param("  b\n\n    c", True, id="indented otherwise, blank lines"),
    pytest.param("a\n# ...\nd", True, id="lines left out"),
    pytest.param("a\nc", False, id="lines left out without saying so"),
    pytest.param("c\n# ...\na", False, id="out of order"),
    pytest.param("b\nX", False, id="a line the file does not have"),
]


@pytest.mark.parametrize(("block", "expected"), EXCERPT_CASES)
def test_excerpt_of(block: str, expected: bool) -> None:
    assert excerpt_of(block, "a\n  b\n  c\nd\n") is expected


def test_envoy_sends_the_gate_what_it_reads() -> None:
    envoy = (SNIPPETS / "envoy.yaml").read_text()
    allowed = envoy[envoy.index("allowed_headers:") : envoy.index("status_on_error")]
    names = set(re.findall(r"\{ (?:exact|prefix): ([\w-]+) \}", allowed))
    assert {
        "authorization",
        "x-api-key",
        "origin",
        "referer",
        "sec-fetch-",
        "access-control-request-method",
        "x-forwarded-for",
    } <= names
    assert "use_remote_address: true" in envoy
    assert "status_on_error: { code: ServiceUnavailable }" in envoy
    assert "--proxy envoy" in envoy


def test_traefik_names_the_client_itself_and_hands_the_decision_on() -> None:
    traefik = (SNIPPETS / "traefik.yml").read_text()
    assert "trustForwardHeader: false" in traefik
    response = traefik[traefik.index("authResponseHeaders:") :]
    assert "- X-Token-Access" in response and "- X-Token-Fingerprint" in response
    assert "--proxy traefik" in traefik
