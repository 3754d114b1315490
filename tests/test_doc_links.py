"""Every relative link in README.md and docs/ resolves: the file exists, and an #anchor names one of its headings.

Issue 31: docs pointed at README tables that had moved to docs/benchmarks.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens (repeats get -1, -2, …)."""
    seen: dict[str, int] = {}
    ids: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", markdown.read_text()), re.MULTILINE):
        text = re.sub(r"`|\*\*|\*|_(?=\w)|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def relative_links(document: Path) -> list[str]:
    text = FENCE.sub("", document.read_text())
    found = [a or b for a, b in LINK.findall(text)]
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]  # http:, mailto:, …


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, broken


def test_the_link_finder_sees_links() -> None:
    assert relative_links(ROOT / "README.md"), "the README has relative links; the pattern missed them"


def test_the_capacity_model_cites_where_each_figure_is_stated() -> None:
    """docs/scaling.md named README tables that had moved; each measured input now links its source."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    table = text[text.index("| figure | value |"):text.index("\n\n", text.index("| figure | value |"))]
    rows = table.splitlines()[2:]
    assert rows and all(re.search(r"\]\((benchmarks|settings)\.md", row) for row in rows), rows
