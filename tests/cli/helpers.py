"""Running the installed ``jobqueue`` console script as a user runs it, for the command's
tests here and for the other tests that look at it (worker presence, hostile rows).

The fixtures that use these (`run`, `jq`) are in tests/cli/conftest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The console script of the environment the tests run in.
JOBQUEUE = shutil.which("jobqueue") or str(Path(sys.executable).with_name("jobqueue"))


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line_error(self, code: int, *fragments: str) -> str:
        """Assert the failure contract and return the error line."""
        assert self.code == code, (self.code, self.out, self.err)
        assert "Traceback" not in self.err, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("Error: "), lines[0]
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        return lines[0]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without our settings, so the developer's shell cannot leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBQUEUE_", "DEFAPI_")) and k != "MOCK_AI"
    }
    env.update({"COLUMNS": "200", "NO_COLOR": "1", **extra})
    return env


Run = Callable[..., Result]


@dataclass
class WorkerRun:
    code: int | None = None
    output: tuple[str, str] = ("", "")


@contextmanager
def worker_running(cwd: Path, base: Sequence[str], *options: str) -> Iterator[WorkerRun]:
    """`jobqueue <base> worker <options>` with the mock generator, stopped with SIGTERM (the
    graceful stop) when the block ends; its exit code and output are kept."""
    command = [JOBQUEUE, *base, "worker", "--poll-interval", "0.2", *options]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=clean_env(MOCK_AI="true"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = WorkerRun()
    try:
        yield worker
    finally:
        process.send_signal(signal.SIGTERM)
        worker.output = process.communicate(timeout=60)
        worker.code = process.returncode


def run_in_process(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """`jobqueue ARGS` run in this process, for the many tests whose point is what a command
    reads and prints, not the process: the same entry point as the console script
    (`jobqueue.cli.group.main`, where errors become one line and an exit code), in ``cwd``
    (its ``.env``), with exactly the environment ``env`` (`clean_env()` unless given), on
    stdout and stderr streams of its own, and logging as a fresh process has it. An
    exception that escapes becomes a traceback on stderr and exit code 1, as Python's own
    exit would make it; a thread left running, which would keep the process from exiting,
    fails the test.

    Starting the console script costs about a second of imports on a loaded machine, so a
    test that reads the table ten times spends most of its time starting processes. Tests
    of the process itself (signals, start-up, the installed script, ``python -m``) run it
    as a subprocess with the `run` fixture or `JOBQUEUE`."""
    import logging
    import threading
    import traceback

    from click.testing import CliRunner

    from jobqueue.cli.group import main
    from jobqueue.cli.output import out

    threads_before = set(threading.enumerate())
    wanted = clean_env() if env is None else env
    overrides: dict[str, str | None] = {k: None for k in os.environ if k not in wanted}
    overrides.update(wanted)
    saved_environ = dict(os.environ)  # the command's .env may add to it
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    previous = Path.cwd()
    code: int
    try:
        out.cache_clear()  # the results console reads the environment when it is made
        # As in a fresh process: no handler on the root logger (pytest's capture hangs
        # there), so a warning nothing handles reaches stderr through logging's last resort.
        root.handlers[:] = []
        root.setLevel(logging.WARNING)
        os.chdir(cwd)
        with CliRunner().isolation(env=overrides) as (stdout, stderr, _):
            try:
                main(list(args))
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
            else:  # pragma: no cover - main always exits
                code = 0
            sys.stdout.flush()
            sys.stderr.flush()
            # The real process waits for the threads that are not daemons when it exits; one
            # that never ends would hang the command, which a subprocess would show.
            for thread in threading.enumerate():
                if thread not in threads_before and not thread.daemon:
                    thread.join(timeout=10)
                    assert not thread.is_alive(), (
                        f"`jobqueue {' '.join(args)}` left a thread running: {thread}"
                    )
            return Result(
                code,
                stdout.getvalue().decode("utf-8"),
                stderr.getvalue().decode("utf-8", "backslashreplace"),
            )
    finally:
        os.chdir(previous)
        out.cache_clear()
        os.environ.clear()
        os.environ.update(saved_environ)
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
