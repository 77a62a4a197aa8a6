"""What the fast-path conformance tests share (`tests/drivers/test_direct.py` on
PostgreSQL, `tests/drivers/test_sqlite.py` on SQLite): rows to insert and to complete, and
the comparison of the rows SQLAlchemy returns with the rows the fast path returns."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from jobqueue.sql.steps import Rows

#: Columns whose value the statement takes from the database clock: equal in type, close
#: in time, never compared exactly.
CLOCK = {"created_at", "updated_at", "run_at", "started_at", "lease_expires_at", "completed_at"}
WORKER = "conformance"


def assert_same_rows(through_sa: Rows, through_fast: Rows) -> None:
    """The same rows, column for column, value for value (and type for type); times the
    statement read from the clock only of the same kind and close."""
    assert len(through_sa) == len(through_fast)
    key = (lambda r: str(r.get("id"))) if through_sa and "id" in through_sa[0] else None
    for a, b in zip(sorted(through_sa, key=key), sorted(through_fast, key=key), strict=True):
        assert list(a) == list(b)
        for column in a:
            x, y = a[column], b[column]
            assert type(x) is type(y), (column, x, y)
            if isinstance(x, datetime) and column in CLOCK:
                assert x.tzinfo is not None and y.tzinfo is not None
                assert x.utcoffset() == y.utcoffset() == timedelta(0)
                assert abs(x - y) < timedelta(minutes=5), column
            elif isinstance(x, list):
                assert sorted(map(str, x)) == sorted(map(str, y)), column
            else:
                assert x == y, column


def new_row(**changes: Any) -> dict[str, Any]:
    return {
        "id": uuid.UUID(int=1000),
        "queue": "default",
        "kind": "image",
        "payload": '{"prompt": "x"}',
        "payload_value": {"prompt": "x"},
        "priority": 0,
        "max_attempts": 3,
        "owner_id": None,
        "idempotency_key": None,
        "limit_key": None,
        "run_at_value": None,
        "delay_seconds": 1.5,
        **changes,
    }


def held(rows: Rows) -> list[tuple[uuid.UUID, int, datetime]]:
    return [(r["id"], r["attempts"], r["started_at"]) for r in rows if r["id"] is not None]


def completions(rows: Rows) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "attempt": a,
            "started": t,
            "result": '{"url": "u"}',
            "result_url": None,
            "cost": None,
            "cost_unit": None,
        }
        for i, a, t in held(rows)
    ]
