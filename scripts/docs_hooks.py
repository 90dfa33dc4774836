"""mkdocs hooks (mkdocs.yml `hooks:`): the site's links to the repository's CHANGELOG.md.

The changelog lives at the root, where GitHub shows it, and links from there (`docs/behaviour.md`);
the site shows it as docs/changelog.md (a placeholder the hook fills). So on the site, a page's `../CHANGELOG.md` is the
changelog page, and the changelog's `docs/...` links are the site's own pages. Every other link is
checked by `mkdocs build --strict` as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHANGELOG = Path(__file__).resolve().parent.parent / "CHANGELOG.md"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == "changelog.md":  # a placeholder: the page is the root's CHANGELOG.md
        return CHANGELOG.read_text(encoding="utf-8").replace("](docs/", "](")
    return markdown.replace("](../CHANGELOG.md)", "](changelog.md)")
