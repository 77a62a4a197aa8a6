"""Importing the application's code that a command names (``--app``, ``--identify``).

A name is ``module`` or ``module:attribute`` (the attribute may be dotted). The current
directory is searched first, as ``python -c "import module"`` run there would: the
``jobqueue`` console script does not put it on ``sys.path`` by itself, and users of other
tools (Celery's ``-A``, uvicorn) expect ``myapp.jobs`` next to them to be found.

Every failure is a `ConfigurationError` naming the option, the module and the error, so
the command line shows it as one line (exit code 2); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import ConfigurationError
from .worker.registry import Registry


@dataclass(frozen=True, slots=True)
class Imported:
    """What a name led to: its module and, for ``module:attribute``, the attribute."""

    module: ModuleType
    attribute: str | None
    value: Any


def import_object(name: str, option: str) -> Imported:
    """Import ``module`` or ``module:attribute`` named by ``option`` (for messages)."""
    module_name, colon, attribute = name.strip().partition(":")
    if not module_name or (colon and not attribute):
        raise ConfigurationError(
            f"{option} takes module or module:name, not {name!r}",
            hint=f"for example {option} myapp.jobs:jobs",
        )
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise ConfigurationError(
                f"{option} {name}: cannot import {module_name} ({exc})",
                hint=f"run jobqueue in the directory that holds {missing.replace('.', '/')} "
                f"(the current directory {here} is searched) or add its parent directory to "
                "PYTHONPATH",
            ) from exc
        raise _failed(option, name, module_name, exc) from exc
    except Exception as exc:
        raise _failed(option, name, module_name, exc) from exc
    if not attribute:
        return Imported(module, None, module)
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigurationError(
                f"{option} {name}: {module_name} has no attribute {attribute!r}",
                hint=_registries_hint(module) or "check the name after the colon",
            ) from None
    return Imported(module, attribute, value)


def load_registry(name: str, option: str = "--app") -> Registry:
    """The `Registry` that ``name`` leads to: ``module:name`` (a registry, or a function
    called with no arguments that returns one), or ``module`` holding exactly one."""
    imported = import_object(name, option)
    if imported.attribute is None:
        found = _registries(imported.module)
        if len(found) == 1:
            return next(iter(found.values()))
        module_name = imported.module.__name__
        if not found:
            raise ConfigurationError(
                f"{option} {name}: {module_name} holds no jobqueue Registry",
                hint=f"declare `jobs = Registry()` in it, or name the object: "
                f"{option} {module_name}:NAME",
            )
        raise ConfigurationError(
            f"{option} {name}: {module_name} holds several registries ({', '.join(found)})",
            hint=f"name one, e.g. {option} {module_name}:{next(iter(found))}",
        )
    value = imported.value
    if isinstance(value, Registry):
        return value
    made = value
    if callable(value):
        try:
            made = value()
        except Exception as exc:
            raise ConfigurationError(
                f"{option} {name}: calling {imported.attribute}() failed: "
                f"{type(exc).__name__}: {exc}",
                hint="a factory takes no arguments and returns a Registry; "
                "--debug shows the traceback",
            ) from exc
        if isinstance(made, Registry):
            return made
    what = f" is {_a(value)}"
    if callable(value):
        what = f": {imported.attribute}() returned {_a(made)}"
    raise ConfigurationError(
        f"{option} {name}{what}, not a jobqueue Registry",
        hint="point it at `jobs = Registry()` (module:jobs) or at a function that returns one",
    )


def _failed(option: str, name: str, module_name: str, exc: Exception) -> ConfigurationError:
    return ConfigurationError(
        f"{option} {name}: importing {module_name} failed: {type(exc).__name__}: {exc}",
        hint="fix the module or install what it imports; --debug shows the traceback",
    )


def _registries(module: ModuleType) -> dict[str, Registry]:
    return {k: v for k, v in vars(module).items() if isinstance(v, Registry)}


def _registries_hint(module: ModuleType) -> str:
    found = _registries(module)
    if not found:
        return ""
    names = ", ".join(f"{module.__name__}:{k}" for k in found)
    return f"it holds: {names}"


def _a(value: object) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


__all__ = ["Imported", "import_object", "load_registry"]
