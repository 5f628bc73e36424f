"""Every relative link in README.md and docs/*.md leads to a file or folder of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)


def relative_links(markdown: str) -> list[str]:
    """The link targets of a Markdown text that point into the repository (no URL scheme, not a bare #anchor)."""
    prose = _CODE.sub("", _FENCE.sub("", markdown))
    targets = _INLINE.findall(prose) + _REFERENCE.findall(prose)
    return [t for t in targets if not _EXTERNAL.match(t)]


def broken_links(markdown: str, folder: Path) -> list[str]:
    """Relative links of a document in ``folder`` whose path (anchor dropped) is missing or outside the repository."""
    broken = []
    for target in relative_links(markdown):
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (ROOT / path.lstrip("/")) if path.startswith("/") else (folder / path)
        resolved = resolved.resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    return broken


def test_the_link_finder_sees_links_and_ignores_code() -> None:
    """Inline, image and reference links are found; URLs, anchors and links inside code are not checked."""
    text = "\n".join(
        [
            'See [the design](docs/design.md#2-where), ![logo](img/logo.png "Logo") and [ref][r].',
            "[r]: ../sql/ledger/",
            "External [site](https://example.com/x.md), [mail](mailto:a@b.c), [top](#quick-start).",
            "Inline `[not](a-link.md)`, and:",
            "```md",
            "[also not](fenced.md)",
            "```",
        ]
    )
    assert relative_links(text) == ["docs/design.md#2-where", "img/logo.png", "../sql/ledger/"]


def test_a_missing_target_is_reported() -> None:
    """A link to a file that does not exist, or that leaves the repository, is reported as broken."""
    text = "[gone](no-such-file.md) [out](../../../../etc/passwd) [ok](design.md#3-architecture) [up](../README.md)"
    assert broken_links(text, ROOT / "docs") == ["no-such-file.md", "../../../../etc/passwd"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(document: Path) -> None:
    """The document's relative links (anchors dropped) all resolve to files or folders of the repository."""
    assert broken_links(document.read_text(encoding="utf-8"), document.parent) == []


def test_readme_links_the_design_and_the_ledger_contract() -> None:
    """README.md links docs/design.md and docs/ledger-contract.md (not the team's DESIGN.md, absent here)."""
    links = {target.split("#", 1)[0] for target in relative_links((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert {"docs/design.md", "docs/ledger-contract.md"} <= links
    assert not (ROOT / "DESIGN.md").exists()
