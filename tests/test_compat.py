"""The import paths of the modules the layout by layer replaced keep working
(`jobqueue._compat`): every name of every old module is the very object of its new home,
however it is imported, and type checkers see the same through the stubs the wheel
installs (kept in ``src/jobqueue/_stubs/``).

The old paths are for users only: that the package itself imports none of them is checked
by ``mypy src`` (strict, in .ci/run), which refuses an import of an old path anywhere in it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import jobqueue
from jobqueue._compat import MOVED, STUBS, home, stub_source

PACKAGE_DIR = Path(jobqueue.__file__).parent
TYPINGS = STUBS
OLD_NAMES = [(old, name) for old in sorted(MOVED) for name in sorted(MOVED[old])]


@pytest.mark.parametrize(("old", "name"), OLD_NAMES)
def test_every_old_name_is_the_object_of_its_new_home(old: str, name: str) -> None:
    module = importlib.import_module(f"jobqueue.{old}")
    where, new_name = home(old, name)
    assert getattr(module, name) is getattr(importlib.import_module(where), new_name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_form_of_import_works(old: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from jobqueue.{old} import *", namespace)
    assert set(MOVED[old]) <= set(namespace)
    exec(f"import jobqueue.{old} as m", namespace)
    assert namespace["m"] is sys.modules[f"jobqueue.{old}"]
    assert getattr(jobqueue, old) is namespace["m"]
    assert sorted(MOVED[old]) == dir(namespace["m"])
    assert "jobqueue." in (namespace["m"].__doc__ or "")  # says where the names live now
    with pytest.raises(ImportError):
        exec(f"from jobqueue.{old} import no_such_name", {})


def test_old_paths_work_in_a_fresh_interpreter() -> None:
    """The hook is installed by importing the package, which Python does first."""
    code = (
        "from jobqueue.schema import Job, jobs_table; "
        "from jobqueue.database import make_engine, describe_error; "
        "import jobqueue.listener, jobqueue.rls, jobqueue.statements; "
        "print(Job.__module__, jobqueue.listener.Listener.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["jobqueue.models", "jobqueue.drivers.listen"]


def test_no_old_module_has_a_file_of_its_own() -> None:
    """The folder list shows the layers: an old path is served, never kept as a file."""
    for old in MOVED:
        assert not (PACKAGE_DIR / f"{old}.py").exists()
        assert not (PACKAGE_DIR / old).exists()


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_type_stubs_are_current(old: str) -> None:
    """The stubs the wheel installs for the old paths are current. Regenerate with
    ``python -c "from jobqueue._compat import write_stubs; write_stubs()"``."""
    assert (TYPINGS / f"{old}.pyi").read_text() == stub_source(old)
    assert sorted(p.stem for p in TYPINGS.glob("*.pyi")) == sorted(MOVED)
