"""Links between the docs: every relative link of README.md, SECURITY.md and docs/ reaches a file and anchor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _outside_code(text: str) -> str:
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file: one per heading (slugged, -1 for repeats), and <a id>."""
    text = path.read_text()
    found: set[str] = set(re.findall(r'<a id="([^"]+)"', text))
    seen: dict[str, int] = {}
    for line in re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M).split("\n"):
        m = re.match(r"^#{1,6} (.*)$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _links():
    for page in PAGES:
        for target in LINK.findall(_outside_code(page.read_text())):
            if not re.match(r"^[a-z]+:", target):
                yield pytest.param(page, target, id=f"{page.relative_to(ROOT)}->{target}")


@pytest.mark.parametrize("page, target", list(_links()))
def test_relative_link_resolves(page, target):
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
    if anchor:
        assert dest.suffix == ".md" and anchor in anchors(dest), (
            f"{page.relative_to(ROOT)}: link to {target}: no heading or <a id> {anchor!r} in {file or page.name}")


def test_readme_is_the_front_door():
    lines = (ROOT / "README.md").read_text().split("\n")
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; put the details in docs/ and link them"
    text = "\n".join(lines)
    assert "```sh\n./dev up\n```" in text and "```sh\n./dev test\n```" in text  # what CI runs
    assert "## Glossary" in text
