"""The documentation's generated parts and the README's promises match the code.

The full site is built strictly by `.ci/run` (``mkdocs build --strict``); these checks are
the quick part: the generated tables really come from the code, and the README's set-up
commands are the ones CI runs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from jobqueue.cli import cli
from jobqueue.schema import MOVES, Status

ROOT = Path(__file__).resolve().parent.parent


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "jobqueue_docs_hooks", ROOT / "docs" / "hooks" / "jobqueue_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moves_table_is_the_state_machine() -> None:
    hooks = load_hooks()
    rows = hooks.moves_table().splitlines()[2:]
    assert len(rows) == len(Status)
    targets = list(Status)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        source = Status(cells[0].strip("`"))
        allowed = {targets[i] for i, cell in enumerate(cells[1:]) if cell == "✓"}
        assert allowed == set(MOVES[source]), source


def test_cli_reference_covers_every_command() -> None:
    reference = load_hooks().cli_reference()
    for name in cli.commands:
        assert f"## jobqueue {name}\n" in reference
        assert f"Usage: jobqueue {name} " in reference


def test_pages_ask_for_the_generated_parts() -> None:
    hooks = load_hooks()
    assert hooks.MOVES_MARKER in (ROOT / "docs" / "concepts.md").read_text()
    assert hooks.CLI_MARKER in (ROOT / "docs" / "cli.md").read_text()


def test_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    demo = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && jobqueue demo"
    tests = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && pytest"
    assert demo in readme and tests in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install -q -e '\.\[test\]' && pytest\b", ci)
    assert "mkdocs build --strict" in ci
