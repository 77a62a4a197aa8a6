"""The raw ceilings: what the database itself does with the least possible client code.

PostgreSQL: plain psycopg on a bare table (an identity key, a status, a JSON payload and a
partial index on pending rows), with default durability. SQLite: the standard ``sqlite3``
module on the same kind of table, in WAL mode with ``synchronous=NORMAL`` like the library.
Every library number is divided by the matching ceiling from the same run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from .common import Bench
from .peers import harness

#: One payload for every library (the peers' too) and every ceiling.
PAYLOAD = harness.PAYLOAD

# The ceiling names other workloads compare against.
CLAIM_ONE = "raw_claim_one"
CLAIM_ONE_CLIENTS = "raw_claim_one_10_clients"
CLAIM_BATCHED = "raw_claim_batched_100"
CLAIM_BATCHED_CLIENTS = "raw_claim_batched_100_10_clients"
INSERT_ONE = "raw_insert_one_per_commit"
INSERT_MULTI = "raw_insert_multirow"
INSERT_COPY = "raw_copy"
INSERT_BEST = "raw_insert_many_best"
CLIENTS = 10


def run(bench: Bench) -> None:
    if bench.is_postgres:
        Postgres(bench).run()
    else:
        _Sqlite(bench).run()


def claim_rate(bench: Bench, batch: int, rows: int) -> float:
    """The one-client raw claim loop's rate right now (to bracket a library workload)."""
    runner = Postgres(bench) if bench.is_postgres else _Sqlite(bench)
    return runner.claim_rate(f"bracket_{batch}", rows, batch, 1)


class RawPickup:
    """The pickup floor in plain psycopg: commit an INSERT and a NOTIFY, wait for the
    notification on a LISTEN connection, claim one row with SKIP LOCKED and commit. One
    sample per `sample` call, so it can alternate with the library's samples."""

    def __init__(self, bench: Bench) -> None:
        self.pg = Postgres(bench)
        self.table = self.pg.create("pickup")
        self.listener = self.pg.connect(autocommit=True)
        self.listener.execute(f'LISTEN "{self.table}"')
        self.producer = self.pg.connect()
        self.claimer = self.pg.connect()
        self.claim = (
            f"WITH next AS (SELECT id FROM \"{self.table}\" WHERE status = 'pending'"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" UPDATE \"{self.table}\" AS j SET status = 'processing' FROM next"
            " WHERE j.id = next.id RETURNING j.id, j.payload"
        )
        self.samples: list[float] = []

    def sample(self) -> None:
        self.producer.execute(
            f'INSERT INTO "{self.table}" (payload) VALUES (%s)', (self.pg.payload,)
        )
        self.producer.execute("SELECT pg_notify(%s, 'default')", (self.table,))
        self.producer.commit()
        start = time.perf_counter()
        for _ in self.listener.notifies(timeout=10, stop_after=1):
            break
        if self.claimer.execute(self.claim).fetchone() is None:
            raise RuntimeError("the raw pickup found nothing to claim")
        self.claimer.commit()
        self.samples.append(time.perf_counter() - start)

    def close(self) -> None:
        for conn in (self.listener, self.producer, self.claimer):
            conn.close()
        self.pg.drop(self.table)


class InsertOneLoop:
    """The raw single-row INSERT-per-commit loop in blocks, to interleave with a library
    workload: both then see the same machine at the same moments, and their ratio does not
    drift with the load of a shared box."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.seconds = 0.0
        self.rows = 0
        if bench.is_postgres:
            pg = Postgres(bench)
            self._table = pg.create("insert_one_mixed")
            self._conn: Any = pg.connect()
            self._drop: Callable[[str], None] = pg.drop
            self._sql = f'INSERT INTO "{self._table}" (payload) VALUES (%s) RETURNING id'
            self._payload = pg.payload
        else:
            lite = _Sqlite(bench)
            self._table = lite.create("insert_one_mixed")
            self._conn = lite.connect()
            self._drop = lite.drop
            self._sql = f'INSERT INTO "{self._table}" (payload) VALUES (?) RETURNING id'
            self._payload = lite.payload

    def block(self, rows: int) -> None:
        start = time.perf_counter()
        for _ in range(rows):
            if self.bench.is_postgres:
                self._conn.execute(self._sql, (self._payload,)).fetchone()
                self._conn.commit()
            else:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(self._sql, (self._payload,)).fetchone()
                self._conn.execute("COMMIT")
        self.seconds += time.perf_counter() - start
        self.rows += rows

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def close(self) -> None:
        self._conn.close()
        self._drop(self._table)


def _in_threads(clients: int, body: Callable[[], int]) -> tuple[int, float]:
    """Run ``body`` in ``clients`` threads at once; the rows they did and the seconds taken."""
    done: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def target() -> None:
        barrier.wait()
        try:
            done.append(body())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(done), elapsed


class Postgres:
    def __init__(self, bench: Bench) -> None:
        import psycopg

        self.psycopg = psycopg
        self.bench = bench
        self.dsn = bench.libpq_url()
        self.payload = json.dumps(PAYLOAD)

    def connect(self, autocommit: bool = False, **params: Any) -> Any:
        return self.psycopg.connect(self.dsn, autocommit=autocommit, **params)

    def create(self, name: str) -> str:
        t = self.bench.raw_table(name)
        with self.connect(autocommit=True) as conn:
            conn.execute(
                f'CREATE TABLE "{t}" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,'
                " status text NOT NULL DEFAULT 'pending',"
                " payload jsonb NOT NULL DEFAULT '{}',"
                " run_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(f'CREATE INDEX "{t}_pending" ON "{t}" (id) WHERE status = \'pending\'')
        return t

    def drop(self, t: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{t}"')

    def filled(self, name: str, rows: int) -> str:
        t = self.create(name)
        with self.connect(autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{t}" (payload) SELECT %s::jsonb FROM generate_series(1, %s)',
                (self.payload, rows),
            )
            conn.execute(f'VACUUM ANALYZE "{t}"')
        return t

    @staticmethod
    def claim_sql(t: str, batch: int) -> tuple[str, str, str]:
        """The raw loop's statements: claim ``batch`` rows, mark one done, mark many done."""
        claim = (
            f"WITH next AS (SELECT id FROM \"{t}\" WHERE status = 'pending'"
            f" ORDER BY id LIMIT {batch} FOR UPDATE SKIP LOCKED)"
            f" UPDATE \"{t}\" AS j SET status = 'processing' FROM next"
            " WHERE j.id = next.id RETURNING j.id, j.payload"
        )
        done_one = f"UPDATE \"{t}\" SET status = 'done' WHERE id = %s"
        done_many = f"UPDATE \"{t}\" SET status = 'done' WHERE id = ANY(%s)"
        return claim, done_one, done_many

    def claim_loop(self, t: str, batch: int) -> Callable[[], int]:
        claim, done_one, done_many = self.claim_sql(t, batch)

        def body() -> int:
            count = 0
            with self.connect() as conn:
                while True:
                    rows = conn.execute(claim).fetchall()
                    conn.commit()
                    if not rows:
                        return count
                    if batch == 1:
                        conn.execute(done_one, (rows[0][0],))
                    else:
                        conn.execute(done_many, ([r[0] for r in rows],))
                    conn.commit()
                    count += len(rows)

        return body

    def claim_rate(self, name: str, rows: int, batch: int, clients: int) -> float:
        t = self.filled(name, rows)
        done, elapsed = _in_threads(clients, self.claim_loop(t, batch))
        self.drop(t)
        if done != rows:
            raise RuntimeError(f"raw claim loop finished {done} of {rows} rows")
        return done / elapsed

    def claim_ceiling(self, name: str, rows: int, batch: int, clients: int) -> None:
        rate = self.claim_rate(name, rows, batch, clients)
        self.bench.ceiling(name, rate, rows=rows, batch=batch, clients=clients)

    @staticmethod
    def insert_sql(t: str) -> str:
        """The raw single-row INSERT."""
        return f'INSERT INTO "{t}" (payload) VALUES (%s) RETURNING id'

    def insert_each(self, conn: Any, t: str, rows: int) -> None:
        """``rows`` single-row INSERTs into ``t``, each committed (the raw one-by-one loop)."""
        sql = self.insert_sql(t)
        for _ in range(rows):
            conn.execute(sql, (self.payload,)).fetchone()
            conn.commit()

    @staticmethod
    def copy_in(conn: Any, t: str, payloads: list[str]) -> None:
        """One COPY of ``payloads`` into ``t``, committed (the raw bulk load)."""
        with conn.cursor() as cur, cur.copy(f'COPY "{t}" (payload) FROM STDIN') as copy:
            for p in payloads:
                copy.write_row((p,))
        conn.commit()

    def insert_one(self, rows: int) -> None:
        t = self.create("insert_one")
        with self.connect() as conn:
            start = time.perf_counter()
            self.insert_each(conn, t, rows)
            elapsed = time.perf_counter() - start
        self.drop(t)
        self.bench.ceiling(INSERT_ONE, rows / elapsed, rows=rows, seconds=elapsed)

    def insert_multirow(self, rows: int, chunk: int = 5_000) -> None:
        t = self.create("insert_multi")
        payloads = [json.dumps({**PAYLOAD, "n": i}) for i in range(rows)]
        with self.connect() as conn:
            start = time.perf_counter()
            for lo in range(0, rows, chunk):
                part = payloads[lo : lo + chunk]
                values = ", ".join(["(%s)"] * len(part))
                conn.execute(f'INSERT INTO "{t}" (payload) VALUES {values}', part)
            conn.commit()
            elapsed = time.perf_counter() - start
        self.drop(t)
        self.bench.ceiling(INSERT_MULTI, rows / elapsed, rows=rows, chunk=chunk, seconds=elapsed)

    def insert_copy(self, rows: int) -> None:
        t = self.create("copy")
        payloads = [json.dumps({**PAYLOAD, "n": i}) for i in range(rows)]
        with self.connect() as conn:
            start = time.perf_counter()
            self.copy_in(conn, t, payloads)
            elapsed = time.perf_counter() - start
        self.drop(t)
        self.bench.ceiling(INSERT_COPY, rows / elapsed, rows=rows, seconds=elapsed)

    def run(self) -> None:
        s = self.bench.sizes
        self.insert_one(s.raw_insert_one)
        self.insert_multirow(s.raw_insert_many)
        self.insert_copy(s.raw_insert_many)
        c = self.bench.ceilings
        self.bench.ceiling(
            INSERT_BEST, max(c[INSERT_MULTI], c[INSERT_COPY]), note="the faster of the two"
        )
        self.claim_ceiling(CLAIM_ONE, s.raw_claim_one, 1, 1)
        self.claim_ceiling(CLAIM_ONE_CLIENTS, s.raw_claim_one_clients, 1, CLIENTS)
        self.claim_ceiling(CLAIM_BATCHED, s.raw_batched, 100, 1)
        self.claim_ceiling(CLAIM_BATCHED_CLIENTS, s.raw_batched, 100, CLIENTS)


class _Sqlite:
    """The same ceilings on SQLite (no COPY: multi-row INSERT is the bulk path)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.path = bench.sqlite_path()
        self.payload = json.dumps(PAYLOAD)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def create(self, name: str, rows: int = 0) -> str:
        t = self.bench.raw_table(name)
        conn = self.connect()
        conn.execute(
            f'CREATE TABLE "{t}" (id INTEGER PRIMARY KEY, status TEXT NOT NULL DEFAULT'
            " 'pending', payload TEXT NOT NULL DEFAULT '{}', run_at TEXT NOT NULL DEFAULT"
            " CURRENT_TIMESTAMP)"
        )
        conn.execute(f'CREATE INDEX "{t}_pending" ON "{t}" (id) WHERE status = \'pending\'')
        if rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f'INSERT INTO "{t}" (payload) VALUES (?)', ((self.payload,) for _ in range(rows))
            )
            conn.execute("COMMIT")
        conn.close()
        return t

    def drop(self, t: str) -> None:
        conn = self.connect()
        conn.execute(f'DROP TABLE IF EXISTS "{t}"')
        conn.close()

    def claim_loop(self, t: str, batch: int) -> Callable[[], int]:
        claim = (
            f'UPDATE "{t}" SET status = \'processing\' WHERE id IN (SELECT id FROM "{t}"'
            f" WHERE status = 'pending' ORDER BY id LIMIT {batch}) RETURNING id, payload"
        )

        def body() -> int:
            count = 0
            conn = self.connect()
            try:
                while True:
                    conn.execute("BEGIN IMMEDIATE")
                    rows = conn.execute(claim).fetchall()
                    conn.execute("COMMIT")
                    if not rows:
                        return count
                    ids = [r[0] for r in rows]
                    marks = ", ".join("?" * len(ids))
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(f"UPDATE \"{t}\" SET status = 'done' WHERE id IN ({marks})", ids)
                    conn.execute("COMMIT")
                    count += len(rows)
            finally:
                conn.close()

        return body

    def claim_rate(self, name: str, rows: int, batch: int, clients: int) -> float:
        t = self.create(name, rows)
        done, elapsed = _in_threads(clients, self.claim_loop(t, batch))
        self.drop(t)
        return done / elapsed

    def claim_ceiling(self, name: str, rows: int, batch: int, clients: int) -> None:
        rate = self.claim_rate(name, rows, batch, clients)
        self.bench.ceiling(name, rate, rows=rows, batch=batch, clients=clients)

    def run(self) -> None:
        s = self.bench.sizes
        t = self.create("insert_one")
        conn = self.connect()
        start = time.perf_counter()
        for _ in range(s.raw_insert_one):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f'INSERT INTO "{t}" (payload) VALUES (?) RETURNING id', (self.payload,))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        self.drop(t)
        self.bench.ceiling(INSERT_ONE, s.raw_insert_one / elapsed, rows=s.raw_insert_one)

        t = self.create("insert_multi")
        payloads = [(json.dumps({**PAYLOAD, "n": i}),) for i in range(s.raw_insert_many)]
        conn = self.connect()
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f'INSERT INTO "{t}" (payload) VALUES (?)', payloads)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        self.drop(t)
        rate = s.raw_insert_many / elapsed
        self.bench.ceiling(INSERT_MULTI, rate, rows=s.raw_insert_many)
        self.bench.ceiling(INSERT_BEST, rate, note="SQLite has no COPY")

        self.claim_ceiling(CLAIM_ONE, s.raw_claim_one, 1, 1)
        self.claim_ceiling(CLAIM_ONE_CLIENTS, s.raw_claim_one_clients, 1, CLIENTS)
        self.claim_ceiling(CLAIM_BATCHED, s.raw_batched, 100, 1)
        self.claim_ceiling(CLAIM_BATCHED_CLIENTS, s.raw_batched, 100, CLIENTS)
