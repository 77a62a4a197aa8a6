"""Shared fixtures: every behavioural test runs on SQLite and PostgreSQL, sync and async.

PostgreSQL comes from jobqueue's own pytest plugin (``jobqueue.testing``); each test gets its
own jobs table (a fresh name), so tests never see each other's jobs.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, JobQueue, migrate
from tests.support.fake_defapi import fake_defapi  # noqa: F401  (fixture: a fake DefAPI server)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
POSTGRES_FIXTURES = {"jobqueue_postgres_url", "jobqueue_postgres_server_url", "postgres_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs PostgreSQL, and tag it in the JUnit report, so that CI can
    prove the PostgreSQL tests ran instead of being skipped (.ci/check_postgres_ran.py)."""
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
        if item.get_closest_marker("postgres") is not None:
            item.user_properties.append(("backend", "postgres"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Captured output with a lone surrogate (a hostile handler's exception, logged) in a
    form a UTF-8 report can carry: pytest-xdist sends reports between processes as UTF-8."""
    report = yield
    report.sections = [(name, _utf8(text)) for name, text in report.sections]
    return report


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, jobqueue_sqlite_url: str) -> str:
    if request.param == "sqlite":
        return jobqueue_sqlite_url
    url: str = request.getfixturevalue("jobqueue_postgres_url")
    return url


@pytest.fixture
def postgres_url(jobqueue_postgres_url: str) -> str:
    """For tests that only make sense on PostgreSQL."""
    return jobqueue_postgres_url


@pytest.fixture
def table_name() -> str:
    return f"jobs_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def migrated(db_url: str, table_name: str) -> tuple[str, str]:
    migrate(db_url, table=table_name)
    return db_url, table_name


@pytest.fixture
def queue(migrated: tuple[str, str]) -> Iterator[JobQueue]:
    url, table = migrated
    q = JobQueue(url, table=table)
    yield q
    q.close()


@pytest.fixture
async def aqueue(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    url, table = migrated
    q = AsyncJobQueue(url, table=table)
    yield q
    await q.close()


class Either:
    """Makes a JobQueue look like an AsyncJobQueue, so one test body covers both."""

    def __init__(self, target: JobQueue | AsyncJobQueue) -> None:
        self.target = target
        self.is_async = isinstance(target, AsyncJobQueue)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.target, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            value = attr(*args, **kwargs)
            return await value if inspect.isawaitable(value) else value

        return call


@pytest.fixture(params=["sync", "async"])
async def q(request: pytest.FixtureRequest, migrated: tuple[str, str]) -> AsyncIterator[Either]:
    url, table = migrated
    target: JobQueue | AsyncJobQueue = (
        JobQueue(url, table=table) if request.param == "sync" else AsyncJobQueue(url, table=table)
    )
    yield Either(target)
    closed = target.close()
    if inspect.isawaitable(closed):
        await closed


@contextmanager
def sql_runner(url: str) -> Iterator[Callable[..., list[Any]]]:
    """A function that runs SQL in its own transaction on ``url`` (to inspect or damage
    rows as a user could), disposed of afterwards."""
    from sqlalchemy import text

    from jobqueue.drivers.engines import make_engine

    engine = make_engine(url)

    def run(sql: str, **params: Any) -> list[Any]:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result) if result.returns_rows else []

    try:
        yield run
    finally:
        engine.dispose()


@pytest.fixture
def raw_sql(migrated: tuple[str, str]) -> Iterator[Callable[..., list[Any]]]:
    """Run SQL on the test database directly."""
    with sql_runner(migrated[0]) as run:
        yield run


def downgrade(url: str, table: str, revision: str) -> None:
    """Take the jobs table at ``url`` back to migration ``revision`` (Alembic's downgrade)."""
    from alembic import command
    from jobqueue.drivers.engines import make_engine
    from jobqueue.migrations import _config

    engine = make_engine(url)
    try:
        cfg = _config(table, None)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()
