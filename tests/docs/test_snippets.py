"""Every code block in README.md and docs/ runs as written, or is marked a fragment on purpose.

Each page runs in its own process and empty directory (``tests/docs/snippets.py`` has the
rules; docs/architecture.md has them for contributors). All pages start at once, so the
whole run takes about as long as the slowest page. A failure names the page, the line of
the block's opening fence and the block's first line, with the error or the output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from jobqueue.drivers.engines import make_engine
from tests.docs.snippets import ROOT, Block, PageError, display, pages, parse

RUNNER = Path(__file__).resolve().parent / "snippets.py"
PAGE_TIMEOUT = 240.0


def _blocks(page: Path) -> list[Block]:
    try:
        return parse(page)
    except PageError:
        return []  # the page's test reports it


def _needs_postgres(page: Path) -> bool:
    return any(b.needs_postgres for b in _blocks(page))


@dataclass
class PageRun:
    process: subprocess.Popen[str] | None
    result: Path
    unavailable: BaseException | None = None  # why PostgreSQL could not be had
    finished: tuple[dict[str, Any], str] | None = None
    #: Drops the page's PostgreSQL database. Called as soon as the page has finished: each
    #: drop makes PostgreSQL checkpoint, which takes seconds on a busy machine, and a drop
    #: at the session's end would keep the last test process busy after every test ran.
    drop_database: Callable[[], None] | None = None

    def outcome(self) -> tuple[dict[str, Any], str]:
        if self.unavailable is not None:
            raise self.unavailable
        if self.finished is None:
            try:
                self.finished = self._wait()
            finally:
                drop, self.drop_database = self.drop_database, None
                if drop is not None:
                    drop()
        return self.finished

    def _wait(self) -> tuple[dict[str, Any], str]:
        assert self.process is not None
        try:
            out, _ = self.process.communicate(timeout=PAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
            pytest.fail(f"the page's blocks still ran after {PAGE_TIMEOUT:.0f} s:\n{out}")
        if not self.result.exists():
            pytest.fail(f"the block runner crashed (status {self.process.returncode}):\n{out}")
        data: dict[str, Any] = json.loads(self.result.read_text())
        return data, out


def _selected_pages(session: pytest.Session) -> list[Path]:
    """The pages the selected tests look at (all of them in a full run)."""
    wanted: set[Path] = set()
    for item in session.items:
        if item.module is not None and item.module.__name__ != __name__:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "page" in callspec.params:
            wanted.add(callspec.params["page"])
        elif item.name == "test_web_page_curl_walk_through":
            wanted.add(ROOT / "docs" / "web.md")
    return [p for p in pages() if p in wanted]


@pytest.fixture(scope="session")
def page_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, PageRun]]:
    """Start every page at once; each test then waits for its own page."""
    server: str | None = None
    unavailable: BaseException | None = None
    if any(_needs_postgres(p) for p in _selected_pages(request.session)):
        try:
            server = request.getfixturevalue("jobqueue_postgres_server_url")
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            unavailable = exc
    databases: list[str] = []
    admin = make_engine(server, isolation_level="AUTOCOMMIT") if server else None
    runs: dict[Path, PageRun] = {}

    def drop(name: str) -> None:
        assert admin is not None
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        databases.remove(name)

    for page in _selected_pages(request.session):
        folder = tmp_path_factory.mktemp("docs-" + page.stem.lower())
        result = folder.parent / f"{folder.name}.json"
        env = dict(os.environ)
        database: str | None = None
        if _needs_postgres(page):
            if admin is None or server is None:
                runs[page] = PageRun(None, result, unavailable)
                continue
            name = f"jobqueue_docs_{uuid.uuid4().hex[:12]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            databases.append(name)
            database = name
            env["DOCS_POSTGRES_URL"] = (
                make_url(server).set(database=name).render_as_string(hide_password=False)
            )
        process = subprocess.Popen(
            [sys.executable, str(RUNNER), str(page), str(result)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runs[page] = PageRun(process, result)
        if database is not None:
            runs[page].drop_database = partial(drop, database)
    yield runs
    for run in runs.values():
        if run.process is not None and run.process.poll() is None:
            run.process.kill()
            run.process.communicate()
    if admin is not None:
        with admin.connect() as conn:
            for name in databases:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _page_params() -> list[Any]:
    return [
        pytest.param(
            page, id=display(page), marks=[pytest.mark.postgres] if _needs_postgres(page) else []
        )
        for page in pages()
    ]


def _failure(page: Path, entry: dict[str, Any]) -> str:
    where = f"{display(page)}:{entry['line']}" if entry["line"] else display(page)
    return (
        f"{where}: the {entry['language'] or ''} block `{entry['first_line']}` failed "
        "(fix it, or mark it <!-- fragment --> if it is not meant to run; see "
        f"'Code blocks in the docs' in docs/architecture.md):\n{entry['error']}"
    )


@pytest.mark.parametrize("page", _page_params())
def test_page_blocks_run(page: Path, page_runs: dict[Path, PageRun]) -> None:
    data, out = page_runs[page].outcome()
    if "error" in data:
        pytest.fail(data["error"], pytrace=False)
    for entry in data["blocks"]:
        if entry["status"] == "failed":
            pytest.fail(
                _failure(page, entry) + (f"\n(runner output)\n{out}" if out else ""), pytrace=False
            )


def test_every_block_names_a_language_and_only_known_markers() -> None:
    problems = []
    for page in pages():
        try:
            parse(page)
        except PageError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


# -- what particular blocks must show, beyond running ----------------------------------------


def _outputs(page_runs: dict[Path, PageRun], page: Path, pattern: str) -> str:
    """The output of the page's bash blocks whose code matches ``pattern``."""
    data, _ = page_runs[page].outcome()
    blocks = {b.line: b for b in parse(page)}
    found = [
        e.get("output", "")
        for e in data.get("blocks", [])
        if e["status"] == "ok" and re.search(pattern, blocks[e["line"]].code)
    ]
    assert found, f"{display(page)}: no block that ran matches {pattern!r}"
    return "\n".join(found)


def test_web_page_curl_walk_through(page_runs: dict[Path, PageRun]) -> None:
    """docs/web.md's curl walk-through, run against the real `jobqueue serve` it starts:
    a job created with the owner cookie completes, and without the cookie it is a 404."""
    page = ROOT / "docs" / "web.md"
    test_page_blocks_run(page, page_runs)
    output = _outputs(page_runs, page, r"\bcurl\b")
    assert re.search(r'"status":\s*"completed"', output), output
    assert re.search(r'"code":\s*"not_found"', output), output
    assert re.search(r'"preview_url":\s*"/mock-images/', output), output
    # The page's example of a job shows the fields the API really sends.
    created = json.loads(output.splitlines()[0])
    example = next(
        json.loads(b.code) for b in parse(page) if b.language == "json" and '"final"' in b.code
    )
    assert sorted(example) == sorted(created), f"{display(page)}: the example job's fields"
