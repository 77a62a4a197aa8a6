"""Every test the documentation names exists: docs/guarantees.md and the other pages cite
tests as ``tests/<folder>/test_x.py::test_name`` (a bare ``::test_name`` continues with the
file named last), and a reference that no longer names a test function fails here.

The test files are read as text (a ``def``/``async def`` at the start of a line); nothing
of the package's source is read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.docs.snippets import ROOT

TESTS = ROOT / "tests"

#: A test file (``tests/queue/test_queue.py``, or a file name alone when only one file of
#: the suite has it), with an optional ``::test_name``; or a ``::test_name`` on its own.
REFERENCE = re.compile(
    r"(?<![\w/.])(?P<file>(?:tests/[\w/]+/)?test_\w+\.py|tests/[\w/]+\.py)(?:::(?P<name>\w+))?"
    r"|(?<![\w:.])::(?P<bare>test_\w+)"
)


@dataclass(frozen=True)
class Reference:
    page: str
    line: int
    text: str
    file: Path | None
    name: str | None


def references(page: Path) -> list[Reference]:
    """The test references of ``page`` in order, each resolved to its file."""
    text = page.read_text(encoding="utf-8")
    found: list[Reference] = []
    current: Path | None = None
    for match in REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        where = str(page.relative_to(ROOT))
        if match["file"]:
            current = resolve(match["file"])
            found.append(Reference(where, line, match[0], current, match["name"]))
        else:
            found.append(Reference(where, line, match[0], current, match["bare"]))
    return found


def resolve(written: str) -> Path | None:
    """The file a reference names: its path, or the one test file of that name."""
    if "/" in written:
        path = ROOT / written
        return path if path.is_file() else None
    candidates = sorted(TESTS.rglob(written))
    return candidates[0] if len(candidates) == 1 else None


def defines(path: Path, name: str) -> bool:
    pattern = rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\("
    return re.search(pattern, path.read_text(encoding="utf-8"), re.MULTILINE) is not None


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_test_the_docs_name_exists() -> None:
    wrong = []
    for page in pages():
        for ref in references(page):
            if ref.file is None:
                why = (
                    "no test file is named before it"
                    if ref.text.startswith("::")
                    else "no such test file (a name alone must be unique: else write the path)"
                )
                wrong.append(f"{ref.page}:{ref.line}: {ref.text}: {why}")
            elif ref.name is not None and not (
                ref.name.startswith("test_") and defines(ref.file, ref.name)
            ):
                wrong.append(
                    f"{ref.page}:{ref.line}: {ref.text}: no test {ref.name} in "
                    f"{ref.file.relative_to(ROOT)}"
                )
    assert not wrong, "\n".join(wrong)


def test_the_guarantees_name_their_tests() -> None:
    """The check above has something to check: the guarantees page cites tests by name."""
    named = [r for r in references(ROOT / "docs" / "guarantees.md") if r.name]
    assert len(named) > 50
    assert all(r.file is not None for r in named)
