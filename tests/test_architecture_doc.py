"""docs/ARCHITECTURE.md names every module under shoal/, and only modules that exist.

Read at test time from the doc and the tree, so a module added anywhere (including the
store and pack packages other branches are rewriting) fails here until the map has a line
for it, and a renamed module fails until the doc follows.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
STAGES = ("Trace", "Store", "Pack", "Deploy", "Serve", "Test", "Async")


def _modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "shoal").rglob("*.py")}


def test_every_module_is_in_the_module_map() -> None:
    text = DOC.read_text()
    assert "## Module map" in text
    mapped = set(re.findall(r"^\| `(shoal/[\w/]+\.py)` \| \S", text.split("## Module map", 1)[1], re.M))
    missing = sorted(_modules() - mapped)
    assert not missing, f"add a line for each to the module map in docs/ARCHITECTURE.md: {missing}"


def test_the_doc_names_no_module_that_does_not_exist() -> None:
    named = set(re.findall(r"shoal/[\w/]+\.py", DOC.read_text()))
    stale = sorted(named - _modules())
    assert not stale, f"docs/ARCHITECTURE.md names modules that are gone: {stale}"


def test_each_stage_owns_a_section() -> None:
    headings = re.findall(r"^## (\w+)", DOC.read_text(), re.M)
    assert [s for s in STAGES if s not in headings] == []
