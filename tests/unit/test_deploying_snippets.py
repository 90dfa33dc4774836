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
    section = readme[readme.index("## Behind a proxy: `validator-gate`") :]
    section = section[: section.index("\n## ", 1)]
    found = [("README.md", lang, text) for lang, text in code_blocks(section) if lang in FILE_OF]
    for page in ("gate.md", "deploying.md"):
        text = (ROOT / "docs" / page).read_text()
        found += [(f"docs/{page}", lang, block) for lang, block in code_blocks(text) if lang in FILE_OF]
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


# --------------------------------------------------------------------------- every spelling checked
# Issue 23, hole 2: a snippet that protected `/v1/` by prefix let `/V1/data` (Express, ASP.NET Core)
# and `/v1;x/data` (Tomcat, Spring) reach the app unchecked. Each snippet now sends every path
# through the gate but the public ones it lists, each by exact match, and a proxy that normalises
# the path before matching sends the app that listed path (tests/e2e/test_differential.py runs
# nginx and Caddy against real apps).


def nginx_locations(text: str) -> dict[str, str]:
    """Each `location ... {` head of the snippet and its body."""
    found = {}
    for match in re.finditer(r"^    location ([^{]+?) \{\n(.*?)^    \}$", text, re.MULTILINE | re.DOTALL):
        found[match[1]] = match[2]
    return found


def test_nginx_checks_every_path_but_exact_public_ones() -> None:
    locations = nginx_locations((SNIPPETS / "nginx.conf").read_text())
    assert "auth_request /_token_gate;" in locations["/"]
    assert "proxy_pass http://api_app;" in locations["/"]  # the path as sent, to the app
    public = [head for head in locations if head not in ("/", "= /_token_gate") and not head.startswith("@")]
    assert public, locations.keys()
    for head in public:
        assert head.startswith("= "), f"location {head}: a public path by prefix or regex"
        path = head[2:]
        # The listed path, not the client's spelling (nginx matched it decoded and normalised).
        assert f"proxy_pass http://api_app{path};" in locations[head], head
        assert 'proxy_set_header X-Token-Access "";' in locations[head], head
        assert 'proxy_set_header X-Token-Fingerprint "";' in locations[head], head
    assert "internal;" in locations["= /_token_gate"]


def test_caddy_checks_every_path_but_exact_public_ones() -> None:
    caddy = (SNIPPETS / "Caddyfile").read_text()
    matchers = dict(re.findall(r"^\t@(\w+) path (.+)$", caddy, re.MULTILINE))
    handles = re.findall(r"^\thandle( @\w+)? \{\n(.*?)^\t\}$", caddy, re.MULTILINE | re.DOTALL)
    catch_all = [body for name, body in handles if not name]
    assert len(catch_all) == 1 and "forward_auth 127.0.0.1:9000" in catch_all[0]
    public = [(name.strip()[1:], body) for name, body in handles if name]
    assert public and len(public) == len(matchers)
    for name, body in public:
        path = matchers[name]
        assert " " not in path and "*" not in path, f"@{name}: one exact path"
        assert f"rewrite * {path}\n" in body, name
        assert "forward_auth" not in body
    # Before any handle: no client may pose as the gate, or send a name a CGI-style app reads as
    # the token's or the gate's header (`X_API_Key`).
    head = caddy[: caddy.index("\thandle")]
    for line in (
        "request_header -X-Token-Access",
        "request_header -X-Token-Fingerprint",
        "request_header -*_*",
    ):
        assert f"\t{line}\n" in head, line
    # Nor name the gate's headers in `Connection`, which makes reverse_proxy drop them.
    assert "\t@names_gate_headers header_regexp Connection (?i)x-token-\n" in head
    assert "\trequest_header @names_gate_headers -Connection\n" in head
    assert "route /v1/" not in caddy


def test_traefik_checks_every_path_but_exact_public_ones() -> None:
    traefik = (SNIPPETS / "traefik.yml").read_text()
    routers = traefik[traefik.index("  routers:") : traefik.index("  services:")]
    api = routers[routers.index("    api:") : routers.index("    public:")]
    public = routers[routers.index("    public:") :]
    assert 'rule: "PathPrefix(`/`)"' in api and "- token-gate" in api
    rule = re.search(r'rule: "(.*)"', public)
    assert rule is not None
    assert all(re.fullmatch(r"Path\(`/[^`*{]*`\)", part) for part in rule[1].split(" || ")), rule[1]
    priority = {
        name: int(value)
        for name, value in re.findall(r"    (\w+):\n(?:      .*\n)*?      priority: (\d+)", routers)
    }
    assert priority["public"] > priority["api"]


def test_envoy_checks_every_path_but_exact_public_ones() -> None:
    envoy = (SNIPPETS / "envoy.yaml").read_text()
    routes = envoy[envoy.index("routes:") : envoy.index("http_filters:")]
    matches = re.findall(r"- match: \{ (\w+): \"([^\"]*)\" \}", routes)
    *public, last = matches
    assert last == ("prefix", "/")
    assert public and all(kind == "path" for kind, _ in public), public
    assert routes.count("disabled: true") == len(public)
    assert routes.rstrip().endswith("route: { cluster: api_app }")  # the catch-all: checked
    assert "normalize_path: true" in envoy and "merge_slashes: true" in envoy
    assert "headers_with_underscores_action: DROP_HEADER" in envoy
