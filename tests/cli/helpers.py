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
