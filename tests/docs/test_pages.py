"""The documentation's generated parts and the README's promises match the code.

The full site is built strictly by `.ci/run` (``mkdocs build --strict``); these checks are
the quick part: the generated parts are committed, current and really come from the code,
and the README's set-up commands are the ones CI runs. (The code blocks of every page run
in tests/docs/test_snippets.py.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from jobqueue import AsyncJobQueue, JobQueue
from jobqueue.cli import cli
from jobqueue.models import MOVES, Status

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "docs" / "hooks" / "jobqueue_docs.py"


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jobqueue_docs_hooks", HOOKS)
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
    for name, command in cli.commands.items():
        assert f"## jobqueue {name}\n" in reference
        assert f"Usage: jobqueue {name} " in reference
        for sub in getattr(command, "commands", {}):  # a group's own commands, one level down
            assert f"### jobqueue {name} {sub}\n" in reference
            assert f"Usage: jobqueue {name} {sub} " in reference


def test_pages_ask_for_the_generated_parts() -> None:
    hooks = load_hooks()
    assert hooks.MOVES_MARKER in (ROOT / "docs" / "concepts.md").read_text()
    assert hooks.CLI_MARKER in (ROOT / "docs" / "cli.md").read_text()
    assert hooks.API_MARKER in (ROOT / "docs" / "reference.md").read_text()


def test_generated_parts_are_committed_and_current() -> None:
    """The pages hold the generated Markdown itself (a repository browser shows it), and it
    is what the code gives today."""
    hooks = load_hooks()
    stale = [p.relative_to(ROOT).as_posix() for p in hooks.stale_pages()]
    assert not stale, f"stale generated docs in {', '.join(stale)}: run `{hooks.REGENERATE}`"
    reference = (ROOT / "docs" / "reference.md").read_text()
    assert "\n::: " not in reference  # no directive left for a plugin to fill in
    assert "| `pending` |" in (ROOT / "docs" / "concepts.md").read_text()
    assert "## jobqueue worker\n" in (ROOT / "docs" / "cli.md").read_text()


def test_api_reference_shows_both_queues_whole() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text()
    for queue_class in (JobQueue, AsyncJobQueue):
        name = queue_class.__name__
        assert f"### `{name}`\n" in reference
        for method in vars(queue_class):
            if not method.startswith("_") and callable(getattr(queue_class, method)):
                assert f"#### `{name}.{method}`\n" in reference, f"{name}.{method}"
    assert "async def enqueue(" in reference and "\ndef enqueue(" in reference
    # The async queue's methods show their own docstrings, not a pointer to the sync ones.
    assert "`JobQueue.wait`, awaited." not in reference
    assert "``on_change`` and ``on_no_worker`` may be plain functions or coroutine" in reference


def test_generated_docs_do_not_depend_on_the_process() -> None:
    """Two processes with different hash seeds write the same pages (a set's order once
    leaked into `prune --help`)."""
    script = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('h', {str(HOOKS)!r}); "
        "h = importlib.util.module_from_spec(spec); spec.loader.exec_module(h); "
        "sys.stdout.write(''.join(h.render_pages().values()))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]


def test_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    demo = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && jobqueue demo"
    tests = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && pytest"
    assert demo in readme and tests in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install -q -e '\.\[test\]' && pytest\b", ci)
    assert "mkdocs build --strict" in ci
