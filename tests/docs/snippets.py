"""Run the code blocks of one documentation page, as a reader who copies them would.

``tests/docs/test_snippets.py`` runs this file once per page (README.md and docs/*.md), each
page in its own process and its own empty directory, all pages at once. The rules (written
for contributors in docs/architecture.md, "Code blocks in the docs"):

- Every fenced block names its language. ``python``, ``bash``/``sh``, ``sql``, ``json``
  and ``yaml`` blocks are checked; ``text`` (output), ``http``, ``ini``, ``dotenv``,
  ``javascript``/``js`` and ``html`` are shown to the reader and not run.
- A page's blocks run in order. Python blocks share one namespace (top-level ``await``
  works, as in ``python -m asyncio``); bash blocks run with ``bash -e -o pipefail`` and the
  installed ``jobqueue`` on the PATH; ``sql`` blocks run on PostgreSQL in a transaction that
  is rolled back; ``json`` and ``yaml`` blocks must parse.
- Environment: ``MOCK_AI=true``, no ``JOBQUEUE_DATABASE_URL`` (so the default SQLite file
  ``jobqueue.db`` in the page's directory), no ``.env``.
- Markers, each an HTML comment on its own line directly above the opening fence (several
  may stand one above the other):

  ``<!-- fragment -->`` (or ``<!-- fragment: why -->``)
      not meant to run as written: a sketch with placeholders, an install command CI runs
      elsewhere. The exception, not the rule.
  ``<!-- postgres -->``
      runs with ``JOBQUEUE_DATABASE_URL`` set to a fresh PostgreSQL database of its own,
      migrated (a production database the page has set up). ``sql`` blocks always do.
  ``<!-- worker -->``
      a ``jobqueue worker`` (mock generator, the block's database) runs from the moment the
      jobs table exists until the page is done, for blocks that wait on jobs.
  ``<!-- background -->``
      a program that runs until stopped (``jobqueue serve``, a worker script): it starts in
      its own process, the rest of the page runs meanwhile, and at the end of the page (not
      before three seconds) it gets SIGTERM. It must not have exited by itself. On a page
      with a background ``jobqueue serve``, the port ``8000`` in every bash block becomes a
      free port (and ``jobqueue serve`` gets ``--port``), and the page goes on once the
      server answers.
  ``<!-- pytest -->``
      the block is a test module: it is written to its own directory and run with pytest
      there (no configuration of this repository applies); it must pass at least one test
      and skip or fail none.

Usage: ``python tests/docs/snippets.py PAGE RESULT_JSON`` in the directory to run in, with
``DOCS_POSTGRES_URL`` set when the page has PostgreSQL blocks. The result lists each block
with ``ok``, ``skipped`` or ``failed`` (and why); the run stops at the first failure, since
later blocks build on earlier ones.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

RUN_LANGUAGES = {
    "python": "python",
    "py": "python",
    "bash": "bash",
    "sh": "bash",
    "sql": "sql",
    "json": "json",
    "yaml": "yaml",
}
SHOWN_LANGUAGES = {"text", "http", "ini", "dotenv", "javascript", "js", "html"}
MARKERS = {"fragment", "postgres", "worker", "background", "pytest"}
POSTGRES_ENV = "DOCS_POSTGRES_URL"
BLOCK_TIMEOUT = 60.0
BACKGROUND_MIN_SECONDS = 3.0
DEMO_PORT = "8000"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_GENERATED = re.compile(r"^\s*<!-- /?jobqueue:[a-z]+\b")
_MARKER = re.compile(r"^\s*<!--\s*(?P<name>[a-z-]+)\s*(?::(?P<note>.*?))?\s*-->\s*$")


def pages() -> list[Path]:
    """The pages whose blocks must run: README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md"))]


def display(page: Path) -> str:
    return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else str(page)


@dataclass
class Block:
    page: Path
    line: int  # the opening fence's line, 1-based
    language: str  # as written after the fence ("" when none)
    code: str
    markers: dict[str, str] = field(default_factory=dict)
    generated: bool = False  # inside a part docs/hooks/jobqueue_docs.py writes (signatures)

    @property
    def kind(self) -> str | None:
        """What runs it: python, bash, sql, json; None for blocks that are only shown."""
        return RUN_LANGUAGES.get(self.language)

    @property
    def runs(self) -> bool:
        return self.kind is not None and "fragment" not in self.markers and not self.generated

    @property
    def needs_postgres(self) -> bool:
        return self.runs and ("postgres" in self.markers or self.kind == "sql")

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "(empty)")

    def where(self) -> str:
        return f"{display(self.page)}:{self.line}: {self.language or '?'} block `{self.first_line}`"


class PageError(Exception):
    """A page that breaks the rules above (a block without a language, an unknown marker)."""


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the markers above each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    generated = False
    while i < len(lines):
        if _GENERATED.match(lines[i]):
            generated = not lines[i].lstrip().startswith("<!-- /")
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        markers: dict[str, str] = {}
        k = i - 1
        while k >= 0 and (marker := _MARKER.match(lines[k])) is not None:
            name = marker["name"]
            if name not in MARKERS:
                problems.append(
                    f"{display(page)}:{k + 1}: unknown marker <!-- {name} --> "
                    f"(known: {', '.join(sorted(MARKERS))})"
                )
            markers[name] = (marker["note"] or "").strip()
            k -= 1
        block = Block(page, i + 1, language, "\n".join(body) + "\n", markers, generated)
        if not language:
            problems.append(
                f"{block.where()}: name the block's language after the fence "
                f"(run: {', '.join(sorted(RUN_LANGUAGES))}; shown: "
                f"{', '.join(sorted(SHOWN_LANGUAGES))})"
            )
        elif language not in RUN_LANGUAGES and language not in SHOWN_LANGUAGES:
            problems.append(
                f"{block.where()}: unknown language {language!r}: add it to RUN_LANGUAGES or "
                "SHOWN_LANGUAGES in tests/docs/snippets.py"
            )
        blocks.append(block)
        i = j + 1
    if problems:
        raise PageError("\n".join(problems))
    return blocks


# -- running ---------------------------------------------------------------------------------


class BlockTimeout(Exception):
    pass


class BlockFailed(Exception):
    """The block ran and failed; the message says how (output, exit code, traceback)."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BlockTimeout(f"still running after {BLOCK_TIMEOUT:.0f} s")


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[str], *, grace: float = 20.0) -> None:
    """SIGTERM the process group (the command and what it started, such as `cmd &`), and
    SIGKILL whatever is still there after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap our own child, so that only live members keep the group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _output_of(process: subprocess.Popen[str]) -> str:
    """What the process printed so far (it writes to a file: a pipe would stay open as long
    as anything the block started in the background runs)."""
    path = getattr(process, "output_path", None)
    return Path(path).read_text(errors="replace") if path else ""


def _tail(text: str, lines: int = 40) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"


class Background:
    """A process that runs while the rest of the page does, stopped at the end."""

    def __init__(self, label: str, process: subprocess.Popen[str], *, clean_exit: bool) -> None:
        self.label = label
        self.process = process
        self.clean_exit = clean_exit  # a program of ours must exit 0 on SIGTERM
        self.started = time.monotonic()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BlockFailed(
                f"{self.label} exited by itself (status {self.process.returncode}):\n"
                + _tail(_output_of(self.process))
            )

    def stop(self) -> None:
        wait = BACKGROUND_MIN_SECONDS - (time.monotonic() - self.started)
        if wait > 0:
            time.sleep(wait)
        self.check_alive()
        _stop(self.process)
        if self.clean_exit and self.process.returncode != 0:
            raise BlockFailed(
                f"{self.label} exited with status {self.process.returncode} on SIGTERM "
                "(expected a graceful stop, status 0):\n" + _tail(_output_of(self.process))
            )


class WorkerWhenReady:
    """Starts ``jobqueue worker`` once the jobs table exists at ``url`` (the block makes it)."""

    def __init__(self, page: PageRunner, url: str | None) -> None:
        self.page = page
        self.url = url or "sqlite:///jobqueue.db"
        self.background: Background | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _table_exists(self) -> bool:
        from sqlalchemy import inspect as sa_inspect

        from jobqueue.drivers.engines import make_engine

        if self.url.startswith("sqlite:///") and not Path(self.url[len("sqlite:///") :]).exists():
            return False
        engine = make_engine(self.url)
        try:
            return sa_inspect(engine).has_table("generation_jobs")
        except Exception:
            return False
        finally:
            engine.dispose()

    def _watch(self) -> None:
        deadline = time.monotonic() + BLOCK_TIMEOUT
        while not self._done.is_set() and time.monotonic() < deadline:
            if self._table_exists():
                env = dict(self.page.env, JOBQUEUE_DATABASE_URL=self.url)
                process = self.page.popen([sys.executable, "-m", "jobqueue", "worker"], env)
                self.background = Background(
                    "the `jobqueue worker` of a <!-- worker --> block", process, clean_exit=True
                )
                return
            time.sleep(0.1)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        if self.background is not None:
            self.background.stop()


class PageRunner:
    def __init__(self, page: Path, postgres_url: str | None) -> None:
        self.page = page
        self.postgres_url = postgres_url
        self.cwd = Path.cwd()
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backgrounds: list[Background] = []
        self.workers: list[WorkerWhenReady] = []
        self.port: str | None = None
        bin_dir = str(Path(sys.executable).parent)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JOBQUEUE_", "DEFAPI_", "DOCS_", "PYTEST_"))
        }
        env.update(MOCK_AI="true", PATH=bin_dir + os.pathsep + env.get("PATH", ""))
        self.env = env

    # environment of one block
    def block_env(self, block: Block) -> dict[str, str]:
        if "postgres" in block.markers:
            assert self.postgres_url is not None
            return dict(self.env, JOBQUEUE_DATABASE_URL=self.postgres_url)
        return dict(self.env)

    def popen(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        fd, path = tempfile.mkstemp(prefix="docs-output-", suffix=".txt")
        try:
            process = subprocess.Popen(
                args,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        process.output_path = path  # type: ignore[attr-defined]
        return process

    def bash_code(self, block: Block) -> str:
        code = block.code
        if self.port is not None:
            code = code.replace(f":{DEMO_PORT}", f":{self.port}")
            code = re.sub(
                r"\bjobqueue serve\b(?![^\n]*--port)", f"jobqueue serve --port {self.port}", code
            )
        return code

    def run(self, blocks: list[Block]) -> list[dict[str, Any]]:
        if any(
            b.runs and b.kind == "bash" and "background" in b.markers and "jobqueue serve" in b.code
            for b in blocks
        ):
            self.port = str(free_port())
        results: list[dict[str, Any]] = []
        failed = False
        try:
            for block in blocks:
                entry: dict[str, Any] = {
                    "line": block.line,
                    "language": block.language,
                    "first_line": block.first_line,
                }
                results.append(entry)
                if failed or not block.runs:
                    entry["status"] = "skipped"
                    continue
                started = time.monotonic()
                try:
                    entry["output"] = self.run_block(block)
                    entry["status"] = "ok"
                except BaseException as exc:
                    entry["status"] = "failed"
                    entry["error"] = self.explain(exc)
                    failed = True
                entry["seconds"] = round(time.monotonic() - started, 2)
        finally:
            stop_errors = self.finish()
        if stop_errors and not failed:
            results.append(
                {
                    "line": stop_errors[0][0],
                    "status": "failed",
                    "language": "",
                    "first_line": stop_errors[0][1],
                    "error": stop_errors[0][2],
                }
            )
        return results

    def finish(self) -> list[tuple[int, str, str]]:
        errors: list[tuple[int, str, str]] = []
        for worker in self.workers:
            try:
                worker.stop()
            except BaseException as exc:
                errors.append((0, "<!-- worker -->", self.explain(exc)))
        for background in self.backgrounds:
            try:
                background.stop()
            except BaseException as exc:
                errors.append((0, background.label, self.explain(exc)))
        if self.loop is not None:
            self.loop.close()
        return errors

    def explain(self, exc: BaseException) -> str:
        if isinstance(exc, BlockFailed | BlockTimeout):
            return str(exc)
        # Keep the frames of the block itself (its file name is the page) and below.
        frames = traceback.extract_tb(exc.__traceback__)
        for index, frame in enumerate(frames):
            if frame.filename == str(self.page):
                frames = frames[index:]  # type: ignore[assignment]
                break
        lines = traceback.format_list(frames) + traceback.format_exception_only(exc)
        return "".join(lines).rstrip()

    def run_block(self, block: Block) -> str:
        if "worker" in block.markers:
            url = self.postgres_url if "postgres" in block.markers else None
            if not self.workers:
                self.workers.append(WorkerWhenReady(self, url))
        if block.kind == "python":
            if "pytest" in block.markers:
                return self.run_pytest(block)
            if "background" in block.markers:
                return self.start_background(block, self.python_file(block))
            return self.run_python(block)
        if block.kind == "bash":
            if "background" in block.markers:
                return self.start_background(
                    block, ["bash", "-e", "-o", "pipefail", "-c", self.bash_code(block)]
                )
            return self.run_bash(block)
        if block.kind == "sql":
            return self.run_sql(block)
        if block.kind == "json":
            try:
                json.loads(block.code)
            except ValueError as exc:
                raise BlockFailed(f"not valid JSON: {exc}") from None
            return ""
        if block.kind == "yaml":
            import yaml  # mkdocs's own dependency

            try:
                yaml.safe_load(block.code)
            except yaml.YAMLError as exc:
                raise BlockFailed(f"not valid YAML: {exc}") from None
            return ""
        raise AssertionError(block.kind)

    def _padded(self, block: Block) -> str:
        """The block's code, placed at its own lines so tracebacks name the page's lines."""
        return "\n" * block.line + block.code

    def run_python(self, block: Block) -> str:
        code = compile(
            self._padded(block),
            str(self.page),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.block_env(block))
        try:
            with _deadline(BLOCK_TIMEOUT):
                result = eval(code, self.namespace)
                if inspect.iscoroutine(result):
                    if self.loop is None:
                        self.loop = asyncio.new_event_loop()
                    self.loop.run_until_complete(result)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return ""

    def python_file(self, block: Block) -> list[str]:
        folder = Path(tempfile.mkdtemp(prefix="docs-block-"))
        path = folder / f"block_{block.line}.py"
        path.write_text(block.code, encoding="utf-8")
        return [sys.executable, str(path)]

    def start_background(self, block: Block, args: list[str]) -> str:
        # A bash block's shell dies of SIGTERM itself; a Python program must stop cleanly.
        background = Background(
            block.where(),
            self.popen(args, self.block_env(block)),
            clean_exit=block.kind == "python",
        )
        self.backgrounds.append(background)
        if self.port is not None and "jobqueue serve" in block.code:
            deadline = time.monotonic() + BLOCK_TIMEOUT
            while True:
                background.check_alive()
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", int(self.port))) == 0:
                        break
                if time.monotonic() > deadline:
                    raise BlockTimeout(f"the server did not answer on port {self.port}")
                time.sleep(0.1)
        else:
            time.sleep(0.5)
            background.check_alive()
        return ""

    def run_bash(self, block: Block) -> str:
        process = self.popen(
            ["bash", "-e", "-o", "pipefail", "-c", self.bash_code(block)], self.block_env(block)
        )
        try:
            process.wait(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop(process)
            raise BlockTimeout(
                f"still running after {BLOCK_TIMEOUT:.0f} s; output:\n{_tail(_output_of(process))}"
            ) from None
        status = process.returncode
        _stop(process, grace=10.0)  # whatever the block left running (`cmd &`)
        out = _output_of(process)
        if status != 0:
            raise BlockFailed(f"exit status {status}; output:\n{_tail(out)}")
        return out

    def run_sql(self, block: Block) -> str:
        from jobqueue.drivers.engines import make_engine

        assert self.postgres_url is not None
        engine = make_engine(self.postgres_url)
        try:
            with engine.connect() as conn:
                transaction = conn.begin()
                try:
                    conn.exec_driver_sql(block.code)
                finally:
                    transaction.rollback()
        finally:
            engine.dispose()
        return ""

    def run_pytest(self, block: Block) -> str:
        folder = Path(tempfile.mkdtemp(prefix="docs-pytest-"))
        (folder / f"test_block_{block.line}.py").write_text(block.code, encoding="utf-8")
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rs",
                "--rootdir",
                str(folder),
                str(folder),
            ],
            cwd=folder,
            env=self.block_env(block),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
        out = process.stderr + process.stdout  # pytest's own report last
        summary = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else ""
        if (
            process.returncode != 0
            or "passed" not in summary
            or re.search(r"\b(skipped|failed|error|xfailed)\b", summary)
        ):
            raise BlockFailed(f"pytest did not pass the block's tests cleanly:\n{_tail(out)}")
        return out


def main() -> None:
    page, result_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    try:
        blocks = parse(page)
    except PageError as exc:
        result_path.write_text(json.dumps({"error": str(exc)}))
        return
    postgres_url = os.environ.get(POSTGRES_ENV)
    if postgres_url and any(b.needs_postgres for b in blocks):
        from jobqueue import migrate

        migrate(postgres_url)
    results = PageRunner(page, postgres_url).run(blocks)
    result_path.write_text(json.dumps({"blocks": results}))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # a block's leftover threads (an engine, a loop) must not keep us alive
