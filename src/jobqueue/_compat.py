"""The import paths of modules that the package's layout by layer replaced.

``jobqueue.schema``, ``jobqueue.statements``, ``jobqueue.database`` and the others in
`MOVED` were modules once; their names live in other modules now (``jobqueue.schema.Job``
is `jobqueue.models.Job`). So that code importing them keeps working, an import hook
(`install`, run by ``import jobqueue``) serves each old path as a module that re-exports
its names from their new homes, each the very same object. Nothing in jobqueue itself
imports the old paths; new code should import from the new homes. Type checkers read the
old paths from stubs made from the same table (`stub_source`).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "jobqueue"

#: Each old module: its names, and the module each lives in now (``module:name`` when the
#: name changed too).
MOVED: dict[str, dict[str, str]] = {
    "schema": {
        **dict.fromkeys(
            (
                "DEFAULT_TABLE",
                "DEFAULT_QUEUE",
                "DEFAULT_KIND",
                "DEFAULT_MAX_ATTEMPTS",
                "MAX_NAME",
                "MAX_TEXT",
                "MAX_PRIORITY",
                "MAX_ATTEMPTS_LIMIT",
                "MAX_PROGRESS_MESSAGE",
                "MAX_REMOTE_TASK_ID",
                "MAX_RESULT_URL",
                "MAX_ERROR",
                "JSON_COLUMNS",
                "Status",
                "FINAL_STATUSES",
                "MOVES",
                "can_move",
                "sources_of",
                "check_move",
                "Job",
                "read_errors",
                "error_time",
            ),
            "models",
        ),
        **dict.fromkeys(
            (
                "validate_identifier",
                "TABLE_NAME_MAX_LENGTH",
                "validate_table_name",
                "jobs_table",
                "owner_scope",
                "idempotency_scope",
                "bounds",
                "OWNER_COLUMNS",
            ),
            "sql.table",
        ),
    },
    "statements": {
        "Statements": "sql.statements",
        "Bound": "sql.steps:Query",
        "Params": "sql.steps",
        "MAX_SHAPES": "sql.common",
    },
    "dialects": dict.fromkeys(
        (
            "UTCDateTime",
            "sqlite_time",
            "SQLiteJSON",
            "json_type",
            "SQLITE_NOW",
            "DbNow",
            "DbNowPlus",
            "Finite",
            "DbNowText",
            "DbNowAfter",
            "JsonAppend",
            "NewJobId",
        ),
        "sql.dialect",
    ),
    "database": {
        **dict.fromkeys(
            (
                "DEFAULT_URL",
                "URL_ENV",
                "SQLITE_BUSY_TIMEOUT_MS",
                "database_url",
                "normalise_url",
                "READ_ONLY",
                "PRE_PING",
                "make_engine",
                "make_async_engine",
                "describe_url",
                "sqlite_path",
                "describe_database",
            ),
            "drivers.engines",
        ),
        "END_OF_TIME": "models",
        "START_OF_TIME": "models",
        "redact": "errors",
        "ERROR_TEXT_LIMIT": "errors",
        "describe_error": "errors",
        "translate": "drivers.errors",
        "translated_errors": "drivers.errors",
    },
    "bulk": {
        "CopyRows": "sql.steps",
        "Direct": "sql.steps",
        "copy_rows": "drivers.copy",
        "copy_rows_async": "drivers.copy",
        "Processor": "drivers.direct",
        "run_direct": "drivers.direct",
        "run_direct_async": "drivers.direct",
    },
    "listener": dict.fromkeys(
        ("DEFAULT_HEALTH_INTERVAL", "Listener", "libpq_url", "log"), "drivers.listen"
    ),
    "rls": {
        **dict.fromkeys(
            (
                "DEFAULT_WORKER_ROLE",
                "USER_ROLE",
                "ANONYMOUS_ROLE",
                "OWNER_INSERT_POLICY",
                "OWNER_SELECT_POLICY",
                "WORKER_POLICY",
                "WORKER_VERSION_POLICY",
                "USER_COLUMNS",
                "rls_statements",
                "live_workers_statements",
                "supabase_sql",
            ),
            "sql.rls",
        ),
        "supabase_script": "migrations.supabase",
        "apply_rls": "migrations.supabase",
    },
}


def home(old: str, name: str) -> tuple[str, str]:
    """The module (full name) and the name under which ``jobqueue.<old>.<name>`` lives now."""
    where = MOVED[old][name]
    module, _, new_name = where.partition(":")
    return f"{PACKAGE}.{module}", new_name or name


def _docstring(old: str) -> str:
    homes = sorted({home(old, name)[0] for name in MOVED[old]})
    return (
        f"The old import path of {', '.join(f'`{h}`' for h in homes)}: its names are "
        "served from there (see `jobqueue._compat`)."
    )


class _OldPaths(MetaPathFinder, Loader):
    """Finds and loads the old modules of `MOVED`, after every other finder failed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        package, _, old = fullname.partition(".")
        if package != PACKAGE or old not in MOVED:
            return None
        return ModuleSpec(fullname, self, origin=f"{PACKAGE}._compat")

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__.partition(".")[2]
        names = sorted(MOVED[old])
        module.__doc__ = _docstring(old)
        module.__all__ = names  # type: ignore[attr-defined]

        def __getattr__(name: str) -> Any:  # noqa: N807 (the module hook's name)
            if name not in MOVED[old]:
                raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
            where, new_name = home(old, name)
            value = getattr(importlib.import_module(where), new_name)
            setattr(module, name, value)
            return value

        def __dir__() -> list[str]:  # noqa: N807
            return names

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__dir__ = __dir__  # type: ignore[method-assign]


_FINDER = _OldPaths()


def install() -> None:
    """Serve the old import paths (once per process)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)


def stub_source(old: str) -> str:
    """The type stub (``.pyi``) of the old module ``jobqueue.<old>``, for type checkers,
    which do not run the import hook."""
    lines = [*textwrap.wrap(f'"""{_docstring(old)}"""', width=96), ""]
    by_module: dict[str, list[str]] = {}
    for name in sorted(MOVED[old]):
        where, new_name = home(old, name)
        alias = f"{new_name} as {name}"
        by_module.setdefault(where, []).append(alias)
    for where in sorted(by_module):
        aliases = sorted(by_module[where], key=lambda a: a.split(" as ")[1])
        lines.append(f"from {where} import (")
        lines += [f"    {alias}," for alias in aliases]
        lines.append(")")
    lines += ["", "__all__ = ["]
    lines += [f"    {name!r}," for name in sorted(MOVED[old])]
    lines.append("]")
    return "\n".join(lines) + "\n"


#: Where the stubs are kept in the repository; the wheel installs them as
#: ``jobqueue/<old>.pyi`` (pyproject.toml), beside the package's modules.
STUBS = Path(__file__).resolve().parent / "_stubs"


def write_stubs(directory: str | Path = STUBS) -> list[Path]:
    """Write every old module's stub into ``directory``; the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for old in sorted(MOVED):
        path = out / f"{old}.pyi"
        path.write_text(stub_source(old))
        written.append(path)
    return written
