"""Fixtures of the observability tests (real databases, SQLite and PostgreSQL, through the
`migrated` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jobqueue import AsyncJobQueue


@pytest.fixture
async def jq(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    """A queue whose retries come back almost at once, so retry tests stay short."""
    url, table = migrated
    q = AsyncJobQueue(url, table=table, retry_backoff=(0.01, 0.02))
    yield q
    await q.close()
