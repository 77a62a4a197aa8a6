"""The peers, and the virtualenvs the comparison creates for them and then reuses.

Each peer gets its own virtualenv, ``<cache>/peers/<name>-<version>`` (``<cache>`` is
``$XDG_CACHE_HOME/jobqueue-bench``, by default ``~/.cache/jobqueue-bench``), installed by
pip from the package index with the versions pinned here: the peers never share an
environment with jobqueue or with each other, so none of them runs with another's
dependencies. A virtualenv is reused while its marker file names the same requirements and
interpreter and the peer still imports in it; otherwise it is made anew.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The peer scripts (``bench_<name>.py``) and the harness they import.
SCRIPTS = Path(__file__).resolve().parent
MARKER = "jobqueue-bench.json"
#: pip installs the pinned packages and their dependencies in a few minutes at most.
PIP_TIMEOUT = 900.0


@dataclass(frozen=True)
class PeerSpec:
    """A peer library: what to install, on which Python, and the script that drives it."""

    name: str
    label: str
    version: str
    requirements: tuple[str, ...]
    module: str
    driver: str
    min_python: tuple[int, int] = (3, 11)

    @property
    def script(self) -> Path:
        return SCRIPTS / f"bench_{self.name}.py"

    @property
    def title(self) -> str:
        return f"{self.label} {self.version}"


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        PeerSpec(
            "pgqueuer",
            "PgQueuer",
            "1.6.0",
            ("pgqueuer[asyncpg]==1.6.0",),
            "pgqueuer",
            "asyncpg",
        ),
        # psycopg's binary build, as jobqueue's own install has: without it psycopg runs
        # its pure-Python implementation, and procrastinate would be measured on that.
        PeerSpec(
            "procrastinate",
            "procrastinate",
            "3.10.0",
            ("procrastinate==3.10.0", "psycopg[binary]"),
            "procrastinate",
            "psycopg",
        ),
        PeerSpec("oban", "Oban", "0.7.0", ("oban==0.7.0",), "oban", "psycopg", (3, 12)),
    )
}


class PeerSkipped(Exception):
    """The peer cannot run on this machine and the comparison goes on without it."""


class PeerUnavailable(Exception):
    """The peer's virtualenv could not be made (no package index, a failed install)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jobqueue-bench" / "peers"


def python_version(python: str) -> tuple[int, int] | None:
    """The interpreter's (major, minor), or None when it does not run."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def _candidates() -> Iterator[str]:
    for minor in range(10, 21):
        found = shutil.which(f"python3.{minor}")
        if found:
            yield found
    # pyenv's interpreters, for a machine whose PATH has no shim for them
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    if root.is_dir():
        yield from (str(version / "bin" / "python3") for version in sorted(root.iterdir()))


def find_python(minimum: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """An interpreter at least ``minimum``: this one when it is, else the oldest that is
    (the nearest to the one jobqueue's side runs on)."""
    here = sys.version_info[:2]
    if here >= minimum:
        return sys.executable, (here[0], here[1])
    found = [(v, python) for python in _candidates() if (v := python_version(python))]
    fit = sorted((v, python) for v, python in found if v >= minimum)
    if fit:
        return fit[0][1], fit[0][0]
    want = ".".join(map(str, minimum))
    raise PeerSkipped(f"needs Python {want}+ (none found on PATH or under pyenv)")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time builds a virtualenv (two benchmark runs may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _marker(spec: PeerSpec, version: tuple[int, int]) -> dict[str, object]:
    return {"requirements": list(spec.requirements), "python": list(version)}


def _usable(venv: Path, spec: PeerSpec, version: tuple[int, int]) -> bool:
    marker = venv / MARKER
    if not marker.is_file():
        return False
    try:
        if json.loads(marker.read_text()) != _marker(spec, version):
            return False
    except ValueError:
        return False
    python = venv / "bin" / "python"
    check = subprocess.run(
        [str(python), "-c", f"import {spec.module}"], capture_output=True, timeout=120
    )
    return check.returncode == 0


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Venv:
    """A peer's virtualenv, ready: its interpreter and that interpreter's version."""

    python: Path
    version: tuple[int, int]

    @property
    def python_version(self) -> str:
        return ".".join(map(str, self.version))


def ensure_venv(spec: PeerSpec, note: Callable[[str], None] = print) -> Venv:
    """The peer's virtualenv, made and installed first if need be."""
    python, version = find_python(spec.min_python)
    venv = cache_dir() / f"{spec.name}-{spec.version}"
    ready = Venv(venv / "bin" / "python", version)
    with _locked(venv.with_name(venv.name + ".lock")):
        if _usable(venv, spec, version):
            return ready
        note(f"creating {venv} (Python {'.'.join(map(str, version))}) ...")
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run(
            [python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
        )
        if made.returncode != 0:
            raise PeerUnavailable(f"python -m venv failed: {_tail(made.stderr)}")
        try:
            pip = subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                    *spec.requirements,
                ],
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT,
            )
        except subprocess.TimeoutExpired as e:
            shutil.rmtree(venv, ignore_errors=True)
            raise PeerUnavailable(f"pip install timed out after {e.timeout:.0f} s") from e
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise PeerUnavailable(
                f"pip install {' '.join(spec.requirements)} failed "
                f"(is the package index reachable?): {_tail(pip.stderr)}"
            )
        (venv / MARKER).write_text(json.dumps(_marker(spec, version)) + "\n")
    return ready
