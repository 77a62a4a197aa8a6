"""What every workload shares: sizes, the run's context (URL, drivers, tables to clean up),
results with their ratios, and the few SQL helpers the set-up needs.

Set-up SQL (filling a backlog, counting outcomes) is written here in plain SQL on purpose: it
is the referee, not the thing measured, and it must not depend on the code under test.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, make_url, text

from jobqueue import migrate
from jobqueue.drivers.engines import make_engine, normalise_url
from jobqueue.sql.table import companion_table_names, version_table


@dataclass(frozen=True)
class Sizes:
    """How many jobs each workload uses. ``--quick`` shrinks all of them (CI smoke test)."""

    enqueue_one: int = 5_000
    enqueue_many: int = 50_000
    drain: int = 20_000
    #: Concurrency 1 drains fewer in --quick (one job per two commits is slow).
    drain_one: int = 20_000
    drain_concurrency: tuple[int, ...] = (1, 10, 50)
    latency_samples: int = 300
    latency_poll_interval: float = 0.1
    backlog_small: int = 10_000
    backlog_large: int = 1_000_000
    backlog_finished: int = 200_000
    backlog_drain: int = 10_000
    claim_samples: int = 200
    memory_jobs: int = 200_000
    raw_claim_one: int = 3_000
    #: Rows of the raw claim loops re-measured right before and after each drain.
    bracket_claim_one: int = 600
    bracket_batched: int = 30_000
    raw_claim_one_clients: int = 10_000
    raw_batched: int = 100_000
    raw_insert_one: int = 3_000
    raw_insert_many: int = 50_000
    #: `execution`: calls per block of one-job operations and of 50-job ones, and rounds.
    execution_ops: int = 50
    execution_batch_ops: int = 20
    execution_rounds: int = 7
    #: `contention`: worker processes on one table, the jobs they drain, and the steady
    #: enqueues (a second, for how many seconds) timed meanwhile.
    contention_workers: tuple[int, ...] = (1, 2, 4, 8)
    contention_backlog: int = 150_000
    contention_rate: int = 50
    contention_seconds: float = 20.0
    #: `fair`: no-op jobs of 100 owners, enqueued one owner's backlog after another, and as
    #: many of one owner, drained in turn this many times each.
    fair_jobs: int = 20_000
    fair_rounds: int = 3
    #: `scaleout`: worker processes draining one backlog together, its jobs, and rounds.
    scaleout_workers: tuple[int, ...] = (1, 2, 4, 8)
    scaleout_jobs: int = 100_000
    scaleout_rounds: int = 3
    #: `cost`: jobs whose whole life's WAL and index entries are counted, per table.
    cost_jobs: int = 5_000
    #: `limits`: jobs drained under a key cap and a per-owner cap, and under a rate.
    limits_jobs: int = 1_000
    rate_jobs: int = 2_000


QUICK = Sizes(
    enqueue_one=200,
    enqueue_many=5_000,
    drain=1_000,
    drain_one=200,
    latency_samples=25,
    latency_poll_interval=0.05,
    backlog_small=1_000,
    backlog_large=20_000,
    backlog_finished=5_000,
    backlog_drain=1_000,
    claim_samples=30,
    memory_jobs=3_000,
    raw_claim_one=200,
    bracket_claim_one=100,
    bracket_batched=3_000,
    raw_claim_one_clients=500,
    raw_batched=10_000,
    raw_insert_one=200,
    raw_insert_many=5_000,
    execution_ops=5,
    execution_batch_ops=2,
    execution_rounds=2,
    contention_workers=(2,),
    contention_backlog=15_000,
    contention_seconds=2.0,
    fair_jobs=1_000,
    fair_rounds=1,
    scaleout_workers=(2,),
    scaleout_jobs=1_000,
    scaleout_rounds=1,
    cost_jobs=100,
    limits_jobs=60,
    rate_jobs=300,
)


def scaled(sizes: Sizes, factor: float) -> Sizes:
    """Every count times ``factor`` (for trying the suite at an in-between size)."""
    changes: dict[str, Any] = {
        name: max(1, int(value * factor))
        for name, value in asdict(sizes).items()
        if isinstance(value, int)
    }
    return replace(sizes, **changes)


def resized(sizes: Sizes, settings: Sequence[str]) -> Sizes:
    """``NAME=N`` settings (``--size``) applied to ``sizes``, for the counts."""
    counts = [name for name, value in asdict(sizes).items() if type(value) is int]
    changes: dict[str, Any] = {}
    for item in settings:
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in counts or not value.isdigit():
            raise SystemExit(f"--size {item!r}: expected NAME=N, NAME one of {', '.join(counts)}")
        changes[name] = int(value)
    return replace(sizes, **changes)


@dataclass
class Result:
    """One measured number, with what it is compared to."""

    bench: str
    value: float
    unit: str
    driver: str = "-"
    ceiling: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    min_ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bench": self.bench,
            "driver": self.driver,
            "value": round(self.value, 3),
            "unit": self.unit,
        }
        if self.ceiling is not None:
            out["ceiling"] = self.ceiling
            out["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        if self.target is not None:
            out["target"] = self.target
            out["met"] = self.met
        out.update(self.extra)
        return out


def dump_results(
    path: Path, settings: dict[str, Any], seconds: float, results: list[Result]
) -> None:
    """Write a run to ``path`` as JSON (``--json-out``; `benchmarks.report` reads it)."""
    doc = {"settings": settings, "seconds": seconds, "results": [r.as_json() for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank on the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max of durations in seconds, as milliseconds."""
    return {
        "p50_ms": round(percentile(samples, 50) * 1000, 3),
        "p95_ms": round(percentile(samples, 95) * 1000, 3),
        "p99_ms": round(percentile(samples, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
        "samples": len(samples),
    }


class Bench:
    """The run: where it measures, what it created, and what it found so far."""

    def __init__(self, url: str, sizes: Sizes, *, quiet: bool = False) -> None:
        self.url = url
        self.sizes = sizes
        self.quiet = quiet
        self.backend = normalise_url(url, asynchronous=False).get_backend_name()
        self.prefix = f"bench_{secrets.token_hex(4)}"
        self._tables: list[str] = []
        self._raw_tables: list[str] = []
        self.results: list[Result] = []
        self.ceilings: dict[str, float] = {}
        self.engine: Engine = make_engine(url)

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"

    # -- drivers ---------------------------------------------------------------------------

    def async_drivers(self) -> list[str]:
        """The asyncio drivers to run async workloads with: each one the library supports."""
        if not self.is_postgres:
            return ["aiosqlite"]
        drivers = ["psycopg"]
        try:
            import asyncpg  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            self.note("asyncpg is not installed: async workloads run with psycopg only")
        else:
            drivers.append("asyncpg")
        return drivers

    def async_url(self, driver: str) -> str:
        if not self.is_postgres:
            return self.url
        u = make_url(self.url).set(drivername=f"postgresql+{driver}")
        return u.render_as_string(hide_password=False)

    def libpq_url(self) -> str:
        """The URL for plain psycopg (no SQLAlchemy driver suffix)."""
        u = make_url(self.url).set(drivername="postgresql")
        return u.render_as_string(hide_password=False)

    def sqlite_path(self) -> str:
        database = make_url(self.url).database
        if not database:
            raise SystemExit("the SQLite benchmark needs a file database, not :memory:")
        return database

    # -- tables ----------------------------------------------------------------------------

    def table(self, name: str) -> str:
        """A fresh, migrated jobs table with a name unique to this run (dropped at the end)."""
        full = f"{self.prefix}_{name}"
        self._tables.append(full)
        migrate(self.url, table=full)
        return full

    def raw_table(self, name: str) -> str:
        """A name for a bare table the raw ceilings create themselves."""
        full = f"{self.prefix}_raw_{name}"
        self._raw_tables.append(full)
        return full

    def cleanup(self) -> None:
        with self.engine.begin() as conn:
            for t in self._tables:
                self._drop_jobs_table(conn, t)
            for t in self._raw_tables:
                conn.execute(text(f'DROP TABLE IF EXISTS "{t}"'))
        self._tables.clear()
        self._raw_tables.clear()
        self.engine.dispose()

    def drop(self, table: str) -> None:
        """Drop one jobs table early (large backlogs should not wait for the end)."""
        with self.engine.begin() as conn:
            self._drop_jobs_table(conn, table)
        if table in self._tables:
            self._tables.remove(table)

    def _drop_jobs_table(self, conn: Connection, table: str) -> None:
        """Drop a jobs table and what `migrate` made beside it."""
        for name in (table, *companion_table_names(table), version_table(table)):
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
        if self.is_postgres:
            conn.execute(text(f'DROP FUNCTION IF EXISTS "{table}_notify"()'))

    # -- set-up SQL --------------------------------------------------------------------------

    def fill(self, table: str, *, pending: int, finished: int = 0) -> None:
        """Insert ``pending`` due jobs and ``finished`` completed ones, in a few statements.

        Rows get the table's own server defaults (id, times, queue, kind), as rows that a
        web front end inserts would, except for their place in the fair-share line: each
        pending row takes the turn `enqueue_many` gives a batch of unowned jobs (0, 1, ...),
        so a drain measures claiming. Rows inserted without a turn would enter the line at
        the entrance's pace first (docs/scheduling.md).
        """
        batches = [("completed", finished), ("pending", pending)]
        turned = "turn" in {c["name"] for c in inspect(self.engine).get_columns(table)}
        if self.is_postgres:
            with self.engine.begin() as conn:
                for status, n in batches:
                    for start in range(0, n, 250_000):
                        count = min(250_000, n - start)
                        done = status == "completed"
                        turn = ("NULL" if done else f"g - 1 + {start}") if turned else None
                        conn.execute(
                            text(
                                f'INSERT INTO "{table}" (payload, status, attempts, completed_at'
                                f"{', turn' if turn else ''})"
                                " SELECT jsonb_build_object('prompt', 'a lighthouse', 'n', g),"
                                f" '{status}', {1 if done else 0},"
                                f" {'clock_timestamp()' if done else 'NULL'}"
                                f"{', ' + turn if turn else ''}"
                                " FROM generate_series(1, :n) AS g"
                            ),
                            {"n": count},
                        )
            # VACUUM as autovacuum would soon after a bulk load; otherwise it may start in
            # the middle of a measurement on a million fresh rows.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as ac:
                ac.execute(text(f'VACUUM (ANALYZE) "{table}"'))
            return
        with self.engine.begin() as conn:
            for status, n in batches:
                if not n:
                    continue
                done = status == "completed"
                turn = ("NULL" if done else "n - 1") if turned else None
                conn.execute(
                    text(
                        f'INSERT INTO "{table}" (payload, status, attempts, completed_at'
                        f"{', turn' if turn else ''})"
                        " WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g"
                        " WHERE n < :n)"
                        " SELECT json_object('prompt', 'a lighthouse', 'n', n),"
                        f" '{status}', {1 if done else 0},"
                        f" {'CURRENT_TIMESTAMP' if done else 'NULL'}"
                        f"{', ' + turn if turn else ''} FROM g"
                    ),
                    {"n": n},
                )
            conn.execute(text(f'ANALYZE "{table}"'))

    def outcome(self, table: str) -> dict[str, int]:
        """Counts that prove (or disprove) that every job completed exactly once."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*) AS total,"
                    " SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed,"
                    " SUM(CASE WHEN status = 'completed' AND attempts = 1 THEN 1 ELSE 0 END)"
                    " AS completed_once,"
                    " SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending"
                    f' FROM "{table}"'
                )
            ).one()
        return {k: int(v or 0) for k, v in row._mapping.items()}

    def server_settings(self) -> dict[str, Any]:
        """The database's version and durability settings, recorded with the results."""
        out: dict[str, Any] = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
        with self.engine.connect() as conn:
            if self.is_postgres:
                out["server_version"] = conn.execute(text("SHOW server_version")).scalar()
                for name in (
                    "fsync",
                    "synchronous_commit",
                    "wal_level",
                    "shared_buffers",
                    "full_page_writes",
                    "max_connections",
                ):
                    out[name] = conn.execute(text(f"SHOW {name}")).scalar()
            else:
                out["sqlite_version"] = conn.execute(text("SELECT sqlite_version()")).scalar()
                out["journal_mode"] = conn.execute(text("PRAGMA journal_mode")).scalar()
                out["synchronous"] = conn.execute(text("PRAGMA synchronous")).scalar()
        return out

    # -- reporting -------------------------------------------------------------------------

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"# {message}", file=sys.stderr, flush=True)

    def ceiling(self, name: str, value: float, unit: str = "rows/s", **extra: Any) -> None:
        """Record a raw ceiling (and print it as a result of its own)."""
        self.ceilings[name] = value
        self.emit(Result(name, value, unit, driver="raw", extra=extra))

    def emit(self, result: Result) -> Result:
        if not self.is_postgres:  # the targets are set for PostgreSQL only
            result.target = result.met = result.min_ratio = None
        if result.ceiling is not None and result.ratio is None:
            base = self.ceilings.get(result.ceiling)
            if base:
                result.ratio = result.value / base
        if result.met is None and result.min_ratio is not None and result.ratio is not None:
            result.met = result.ratio >= result.min_ratio
        self.results.append(result)
        print(json.dumps(result.as_json()), flush=True)
        return result


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """``with timer() as elapsed: ...`` then ``elapsed()`` gives the seconds taken."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def rss_bytes(pid: int) -> tuple[int, int]:
    """Current and peak resident set size of a process (Linux ``/proc``), in bytes."""
    rss = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return rss, peak
