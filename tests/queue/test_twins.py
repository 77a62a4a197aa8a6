"""`JobQueue` and `AsyncJobQueue` are twins: the same public methods, each taking the same
parameters (names, kinds, defaults and, up to the sync/async types, annotations), every
async one awaitable and documented as fully as its sync twin."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, JobQueue

#: Methods only one twin has, each with the reason.
ONLY_SYNC = {
    "__enter__": "``with JobQueue(...)``: the async twin is an async context manager",
    "__exit__": "``with JobQueue(...)``: the async twin is an async context manager",
}
ONLY_ASYNC = {
    "__aenter__": "``async with AsyncJobQueue(...)``: the sync twin is a plain context manager",
    "__aexit__": "``async with AsyncJobQueue(...)``: the sync twin is a plain context manager",
}
#: Where the twins' annotations may differ: the sync type and its asyncio counterpart.
ASYNC_TYPES = {"Connection": "AsyncConnection", "Engine": "AsyncEngine"}
#: Compared although private by name: the constructor and the context managers.
DUNDERS = {"__init__", *ONLY_SYNC, *ONLY_ASYNC}


def methods(cls: type) -> set[str]:
    return {
        name
        for name, value in inspect.getmembers(cls)
        if callable(value) and not isinstance(value, type)
        if not name.startswith("_") or name in DUNDERS
    }


SHARED = sorted(methods(JobQueue) - set(ONLY_SYNC))


def test_the_same_methods_and_the_exceptions_are_real() -> None:
    assert methods(JobQueue) - set(ONLY_SYNC) == methods(AsyncJobQueue) - set(ONLY_ASYNC)
    assert set(ONLY_SYNC) <= methods(JobQueue) and not set(ONLY_SYNC) & methods(AsyncJobQueue)
    assert set(ONLY_ASYNC) <= methods(AsyncJobQueue) and not set(ONLY_ASYNC) & methods(JobQueue)
    assert "wait" in SHARED and "list" in SHARED and "__init__" in SHARED


def _as_async(annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    for sync, asynchronous in ASYNC_TYPES.items():
        annotation = re.sub(rf"\b{sync}\b", asynchronous, annotation)
    return annotation


@pytest.mark.parametrize("name", SHARED)
def test_the_same_parameters(name: str) -> None:
    sync = inspect.signature(getattr(JobQueue, name))
    asynchronous = inspect.signature(getattr(AsyncJobQueue, name))

    def shape(signature: inspect.Signature, to_async: bool) -> list[tuple[Any, ...]]:
        return [
            (
                p.name,
                p.kind,
                p.default,
                _as_async(p.annotation) if to_async else p.annotation,
            )
            for p in signature.parameters.values()
        ]

    assert shape(sync, True) == shape(asynchronous, False)
    if name != "__init__":
        assert _as_async(sync.return_annotation) == asynchronous.return_annotation


@pytest.mark.parametrize("name", [n for n in SHARED if n != "__init__"])
def test_every_async_method_is_awaited_and_no_sync_one_is(name: str) -> None:
    assert inspect.iscoroutinefunction(getattr(AsyncJobQueue, name)), name
    assert not inspect.iscoroutinefunction(getattr(JobQueue, name)), name


def _mentions(doc: str) -> set[str]:
    """The names a docstring sets in double backticks, ``like_this``."""
    return set(re.findall(r"``(\w+)", doc))


@pytest.mark.parametrize("name", [n for n in SHARED if n != "__init__"])
def test_every_async_method_is_documented_as_fully_as_its_twin(name: str) -> None:
    sync_doc = inspect.getdoc(getattr(JobQueue, name)) or ""
    async_doc = getattr(AsyncJobQueue, name).__doc__  # its own, not one inherited
    assert sync_doc, f"JobQueue.{name} has no docstring"
    assert async_doc, f"AsyncJobQueue.{name} has no docstring"
    parameters = set(inspect.signature(getattr(JobQueue, name)).parameters)
    missing = (_mentions(sync_doc) & parameters) - _mentions(async_doc)
    assert not missing, f"AsyncJobQueue.{name} does not explain {sorted(missing)}"


def test_the_classes_are_documented_alike() -> None:
    sync_doc = JobQueue.__doc__ or ""
    async_doc = AsyncJobQueue.__doc__ or ""
    assert _mentions(sync_doc) <= _mentions(async_doc)
