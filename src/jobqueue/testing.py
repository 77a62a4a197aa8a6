"""A pytest plugin for apps that use jobqueue (registered as the ``jobqueue`` pytest11 entry
point, so installing the package is enough).

Fixtures:

- ``jobqueue_postgres_server_url`` (session): a PostgreSQL server to test against — the DSN
  in ``JOBQUEUE_TEST_POSTGRES_URL`` when set, else a throwaway testcontainers
  ``PostgresContainer`` when Docker answers, else the test is skipped with the reason
  (or fails, when ``JOBQUEUE_REQUIRE_POSTGRES=1``, so CI cannot pass without PostgreSQL).
- ``jobqueue_postgres_url`` (session): a fresh, empty database on that server, dropped after
  the session, so parallel sessions never see each other's jobs.
- ``jobqueue_sqlite_url``: a SQLite file in the test's temporary directory.
- ``jobqueue_url``: a migrated database (SQLite unless the test is parametrised otherwise).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.outcomes import Skipped  # pytest.skip.Exception, by a name type checkers know
from sqlalchemy import Engine, event, make_url, text

from .drivers.engines import make_engine, normalise_url

POSTGRES_URL_ENV = "JOBQUEUE_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "JOBQUEUE_REQUIRE_POSTGRES"


def _docker_reachable() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return "the docker package is not installed (pip install 'testcontainers[postgres]')"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__})"
    return None


class PostgresUnavailable(Skipped):
    """The skip of a test that needs PostgreSQL when there is none: reported once, in one
    summary line for all of them (see `pytest_runtest_makereport`)."""


def _unavailable(reason: str) -> None:
    message = (
        f"PostgreSQL tests need a server: set {POSTGRES_URL_ENV} "
        f"(e.g. postgresql://postgres@127.0.0.1:5432/postgres) or run Docker; {reason}"
    )
    if os.environ.get(REQUIRE_POSTGRES_ENV, "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    raise PostgresUnavailable(message)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Give every skip for want of PostgreSQL this plugin's location instead of the test's.

    pytest folds skips with the same location and reason into one summary line (``-rs``,
    ``-ra``), so a suite without PostgreSQL says why once (``SKIPPED [88] …testing.py:
    PostgreSQL tests need a server …``) rather than once per test; ``-v`` still names
    each test.
    """
    report = yield
    if (
        call.excinfo is not None
        and isinstance(call.excinfo.value, PostgresUnavailable)
        and isinstance(report.longrepr, tuple)
    ):
        raised = call.excinfo.traceback[-1]  # in `_unavailable`, whichever test asked
        reason = call.excinfo.value.msg
        report.longrepr = (str(raised.path), raised.lineno + 1, f"Skipped: {reason}")
    return report


@pytest.fixture(scope="session")
def jobqueue_postgres_server_url() -> Iterator[str]:
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        yield url
        return
    why_not = _docker_reachable()
    if why_not is not None:
        _unavailable(why_not)
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def jobqueue_postgres_url(jobqueue_postgres_server_url: str) -> Iterator[str]:
    server = normalise_url(jobqueue_postgres_server_url, asynchronous=False)
    name = f"jobqueue_test_{uuid.uuid4().hex[:12]}"
    # make_engine, not create_engine: it honours the URL's jobqueue options (such as
    # ?prepare_threshold=none for a server behind a transaction-mode pooler).
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _unavailable(f"cannot create a test database: {type(exc).__name__}: {exc}")
    try:
        yield (
            make_url(jobqueue_postgres_server_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def jobqueue_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def jobqueue_url(jobqueue_sqlite_url: str) -> str:
    from .migrations import migrate

    migrate(jobqueue_sqlite_url)
    return jobqueue_sqlite_url


def statement_as_sent(engine: Engine, statement: Any, params: Any = None) -> tuple[str, Any]:
    """The SQL text and parameters the driver receives for ``statement``.

    The statement runs once inside a transaction that is rolled back, so that EXPLAIN (in a
    test or a benchmark) sees exactly what the queue sends, with the driver's placeholders.
    """
    seen: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        seen.append((sql, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", grab)
        try:
            with conn.begin() as tx:
                conn.execute(statement, params)
                tx.rollback()
        finally:
            event.remove(conn, "before_cursor_execute", grab)
    return seen[-1]
