"""Write cost per job: the WAL a job's whole life writes (enqueue, claim, completion) and
the index entries it adds, on jobqueue's table and on the raw ceiling's bare table.

Four variants, each on a fresh table of ``cost_jobs`` jobs, each phase measured on its own:

``steps``
    the sync `JobQueue`: ``enqueue`` one job per call (its own commit, as an app does),
    then ``claim`` 10 at a time, then ``complete_many`` 10 at a time: which indexes the
    INSERT, a claim and a completion each touch.
``steps_owned``
    the same with jobs of 100 owners (fair share as users run it; an owned job also has an
    entry in the owner index). Skipped by ``--quick``.
``worker``
    the same one-by-one enqueues, then a `Worker` at concurrency 10 drains the table (the
    `drain` workload's path: completions and the next claims in one statement).
``raw``
    the raw ceiling's table and statements (`benchmarks.raw`): one INSERT per commit, the
    SKIP LOCKED claim of 10 rows per commit, then marking 10 done per commit.

What is counted, between the phase's first and last statement:

- With ``pg_walinspect`` (PostgreSQL 15+; the workload creates the extension when it can
  and drops it again): every WAL record on the table's relations (heap, each index, TOAST,
  and the tables `migrate` makes beside it), found by their file nodes, and the commit
  records of the transactions that wrote them. Per relation: bytes (with and without full
  page images), records, and for an index the entries added (B-tree leaf inserts, posting
  list inserts and the new item of a page split). Exact, and other databases' writes on a
  shared server are left out.
- Always: the deltas of ``pg_stat_wal`` (``wal_bytes``, ``wal_records``, ``wal_fpi``; the
  whole server's, so another database's writes land in them too), of
  ``pg_stat_user_tables`` (``n_tup_ins``, ``n_tup_upd``, ``n_tup_hot_upd``, ``n_tup_del``)
  and of ``pg_stat_user_indexes`` (``idx_scan``, ``idx_tup_read``: the indexes each phase
  reads; PostgreSQL keeps no count of index inserts). Statistics reach the shared views
  asynchronously: each phase's connections carry an ``application_name`` of their own and
  are closed at the end of the phase, and the views are read from a separate connection
  once those backends are gone (a backend flushes its statistics as it exits) and two
  readings agree.

Between phases the table is analysed (outside the measured windows), as autovacuum soon
would after a burst of enqueues, so that the claims and completions run the plans of a
table in use.

A full page image is written the first time a page changes after a checkpoint, so those
bytes depend on when the last checkpoint was; ``bytes_without_fpi`` is the part that does
not, and ``checkpoints`` says whether one happened within the phase.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import make_url

from jobqueue import Completion, JobQueue

from . import raw
from .common import Bench, Result

APP = "jobqueue-bench-cost"
BATCH = 10
OWNERS = 100
WORKER = "bench-cost"
LEASE = 3600.0
#: Seconds to wait for a phase's backends to end and their statistics to arrive.
SETTLE_TIMEOUT = 10.0

#: B-tree records that add an entry: a leaf insert, an insert into a posting list, and a
#: page split (which carries the item being inserted).
INDEX_ENTRY = ("INSERT_LEAF", "INSERT_POST", "SPLIT_L", "SPLIT_R")
_BLOCK = re.compile(r"rel \d+/(\d+)/(\d+)")
_NTUPLES = re.compile(r"ntuples:? (\d+)")


@dataclass
class Relation:
    label: str  # "table", "pkey", "claim_idx", "workers", "toast", ...
    kind: str  # table, index, toast
    relid: int


@dataclass
class Mark:
    """A moment: the WAL position, the server's WAL and checkpoint counters, and the
    statistics of the variant's tables and indexes."""

    lsn: str
    wal: dict[str, int]
    checkpoints: int
    #: By relation id.
    tables: dict[int, dict[str, int]]
    indexes: dict[int, dict[str, int]]


@dataclass
class Usage:
    records: int = 0
    bytes: int = 0
    fpi_bytes: int = 0
    types: Counter[str] = field(default_factory=Counter)
    type_bytes: Counter[str] = field(default_factory=Counter)


class Meter:
    """Reads WAL and statistics on a connection of its own (autocommit)."""

    def __init__(self, bench: Bench) -> None:
        import psycopg

        self.conn = psycopg.connect(bench.libpq_url(), autocommit=True)
        self.dboid = int(
            self._one("SELECT oid FROM pg_database WHERE datname = current_database()")[0]
        )
        self.created_walinspect = False
        self.walinspect = self._walinspect()
        # A temporary physical replication slot keeps the window's WAL until it is read: on
        # a busy server checkpoints may otherwise remove a segment first.
        self.slot = f"jobqueue_bench_cost_{os.getpid()}"
        self.holding = False

    def _walinspect(self) -> bool:
        have = self.conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'pg_walinspect'"
        ).fetchone()
        if have:
            return True
        try:
            self.conn.execute("CREATE EXTENSION pg_walinspect")
        except Exception:  # not available, or not allowed: the statistics alone then
            return False
        self.created_walinspect = True
        return True

    def hold(self) -> None:
        """Keep the WAL from now on until `release` (the slot reserves it at once)."""
        self.release()
        try:
            self.conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true, true)", (self.slot,)
            )
        except Exception:  # no slot to spare, or not allowed: read the WAL without one
            return
        self.holding = True

    def release(self) -> None:
        if self.holding:
            self.conn.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
            self.holding = False

    def close(self) -> None:
        self.release()
        if self.created_walinspect:
            self.conn.execute("DROP EXTENSION IF EXISTS pg_walinspect")
        self.conn.close()

    # -- relations ---------------------------------------------------------------------------

    def relations(self, tables: list[str], main: str) -> dict[int, Relation]:
        """File node -> relation, for ``tables`` (the first is the jobs or raw table), their
        indexes and TOAST; labels drop the main table's name."""
        rows = self.conn.execute(
            """
            WITH t AS (
                SELECT c.oid, c.relname, c.reltoastrelid FROM pg_class c
                WHERE c.oid = ANY(SELECT to_regclass(quote_ident(n)) FROM unnest(%s::text[]) n)
            )
            SELECT t.relname, t.oid, 'table', pg_relation_filenode(t.oid) FROM t
            UNION ALL
            SELECT ic.relname, i.indexrelid, 'index', pg_relation_filenode(i.indexrelid)
            FROM t JOIN pg_index i ON i.indrelid = t.oid JOIN pg_class ic ON ic.oid = i.indexrelid
            UNION ALL
            SELECT t.relname || ' toast', t.reltoastrelid, 'toast',
                   pg_relation_filenode(t.reltoastrelid)
            FROM t WHERE t.reltoastrelid <> 0
            UNION ALL
            SELECT t.relname || ' toast index', i.indexrelid, 'toast',
                   pg_relation_filenode(i.indexrelid)
            FROM t JOIN pg_index i ON i.indrelid = t.reltoastrelid WHERE t.reltoastrelid <> 0
            """,
            (tables,),
        ).fetchall()
        out = {}
        for name, relid, kind, filenode in rows:
            label = "table" if name == main else name.removeprefix(main + "_")
            out[int(filenode)] = Relation(label.removeprefix(main + " "), kind, int(relid))
        return out

    # -- readings ----------------------------------------------------------------------------

    def _stats(self, relids: list[int]) -> tuple[dict[int, Any], dict[int, Any]]:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = {
            r[0]: {"n_tup_ins": r[1], "n_tup_upd": r[2], "n_tup_hot_upd": r[3], "n_tup_del": r[4]}
            for r in self.conn.execute(
                "SELECT relid, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del"
                " FROM pg_stat_user_tables WHERE relid = ANY(%s)",
                (relids,),
            )
        }
        indexes = {
            r[0]: {"idx_scan": r[1], "idx_tup_read": r[2]}
            for r in self.conn.execute(
                "SELECT indexrelid, idx_scan, idx_tup_read FROM pg_stat_user_indexes"
                " WHERE indexrelid = ANY(%s)",
                (relids,),
            )
        }
        return tables, indexes

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """The one row ``sql`` returns."""
        row = self.conn.execute(sql, params).fetchone()
        if row is None:
            raise RuntimeError(f"no row from {sql!r}")
        return tuple(row)

    def settle(self, relids: list[int]) -> None:
        """Wait until the phase's backends are gone and the statistics stopped moving."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            left = self._one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)
            )[0]
            if not left:
                break
            time.sleep(0.02)
        last = None
        while time.monotonic() < deadline:
            now = self._stats(relids)
            if now == last:
                return
            last = now
            time.sleep(0.02)

    def mark(self, relations: dict[int, Relation], *, end: bool = False) -> Mark:
        relids = [r.relid for r in relations.values()]
        self.settle(relids)
        if self.walinspect and not end:
            self.hold()
        # The end of a window is the last flushed position (pg_walinspect reads no further;
        # every phase's commits were flushed before they returned).
        lsn_sql = "pg_current_wal_flush_lsn()" if end else "pg_current_wal_insert_lsn()"
        lsn, records, fpi, nbytes = self._one(
            f"SELECT {lsn_sql}::text, wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
        )
        checkpoints = self._one("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")[
            0
        ]
        tables, indexes = self._stats(relids)
        return Mark(
            lsn,
            {"wal_records": int(records), "wal_fpi": int(fpi), "wal_bytes": int(nbytes)},
            int(checkpoints),
            {k: {n: int(v) for n, v in d.items()} for k, d in tables.items()},
            {k: {n: int(v) for n, v in d.items()} for k, d in indexes.items()},
        )

    def wal(
        self, start: str, end: str, relations: dict[int, Relation]
    ) -> tuple[dict[str, Usage], Usage] | None:
        """The window's WAL on ``relations`` (by label), and the commit records of the
        transactions that wrote it; None if the server removed part of it first."""
        import psycopg

        try:
            rows = self.conn.execute(
                "SELECT xid::text::bigint, resource_manager, record_type, record_length,"
                " fpi_length, description, block_ref FROM pg_get_wal_records_info(%s, %s)"
                " WHERE block_ref LIKE %s OR resource_manager = 'Transaction'",
                (start, end, f"%/{self.dboid}/%"),
            ).fetchall()
        except psycopg.errors.UndefinedFile:
            return None
        finally:
            self.release()
        ours: dict[str, Usage] = defaultdict(Usage)
        xids: set[int] = set()
        commits: list[tuple[int, int]] = []
        for xid, rmgr, rtype, length, fpi, description, block_ref in rows:
            if rmgr == "Transaction":
                if rtype.startswith("COMMIT"):
                    commits.append((xid, length))
                continue
            m = _BLOCK.search(block_ref or "")
            if not m or int(m.group(1)) != self.dboid:
                continue
            rel = relations.get(int(m.group(2)))
            if rel is None:
                continue
            use = ours[rel.label]
            use.records += 1
            use.bytes += length
            use.fpi_bytes += fpi
            kind = f"{rmgr}/{rtype}"
            if rtype.startswith("MULTI_INSERT"):
                n = _NTUPLES.search(description or "")
                use.types[kind + " tuples"] += int(n.group(1)) if n else 1
            use.types[kind] += 1
            use.type_bytes[kind] += length
            if xid:
                xids.add(xid)
        mine = Usage()
        for xid, length in commits:
            if xid in xids:
                mine.records += 1
                mine.bytes += length
        return dict(ours), mine


def _per_job(value: float, jobs: int, digits: int = 2) -> float:
    return round(value / jobs, digits)


def _entries(use: Usage) -> int:
    return sum(use.types.get(f"Btree/{t}", 0) for t in INDEX_ENTRY)


def _heap_counts(use: Usage) -> dict[str, int]:
    t = use.types
    ins = sum(v for k, v in t.items() if k.startswith("Heap/INSERT"))
    ins += sum(v for k, v in t.items() if k.endswith(" tuples"))
    return {
        "inserts": ins,
        "updates": sum(v for k, v in t.items() if k.startswith("Heap/UPDATE")),
        "hot_updates": sum(v for k, v in t.items() if k.startswith("Heap/HOT_UPDATE")),
        "locks": sum(v for k, v in t.items() if k in ("Heap/LOCK", "Heap2/LOCK_UPDATED")),
        "deletes": sum(v for k, v in t.items() if k.startswith("Heap/DELETE")),
        "prunes": t.get("Heap2/PRUNE", 0),
    }


@dataclass
class Variant:
    """One table's life in phases: (phase name, the code that runs it)."""

    name: str
    driver: str
    tables: list[str]
    phases: list[tuple[str, Callable[[], None]]]
    cleanup: Callable[[], None] = lambda: None


def _app_url(url: str, **params: str) -> str:
    u = make_url(url)
    return u.update_query_dict({"application_name": APP, **params}).render_as_string(
        hide_password=False
    )


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for lo in range(0, len(items), size):
        yield items[lo : lo + size]


def _steps(bench: Bench, owned: bool) -> Variant:
    jobs = bench.sizes.cost_jobs
    name = "steps_owned" if owned else "steps"
    table = bench.table(f"cost_{name}")
    url = _app_url(bench.url)
    held: list[Any] = []

    def enqueue() -> None:
        with JobQueue(url, table=table) as q:
            for i in range(jobs):
                owner = f"owner-{i % OWNERS}" if owned else None
                q.enqueue("image", {**raw.PAYLOAD, "n": i}, owner_id=owner)

    def claim() -> None:
        with JobQueue(url, table=table) as q:
            while len(held) < jobs:
                got = q.claim(WORKER, limit=BATCH, lease=LEASE)
                if not got:
                    raise RuntimeError(f"cost {name}: claimed {len(held)} of {jobs}")
                held.extend(got)

    def complete() -> None:
        with JobQueue(url, table=table) as q:
            for chunk in _chunks(held, BATCH):
                written = q.complete_many([Completion(j) for j in chunk])
                if len(written) != len(chunk):
                    raise RuntimeError(f"cost {name}: a completion was not written")

    return Variant(
        name,
        "psycopg (sync)",
        [table, *(table + c for c in ("_workers", "_limits"))],
        [("enqueue", enqueue), ("claim", claim), ("complete", complete)],
    )


def _worker(bench: Bench) -> Variant:
    from .drain import drain

    jobs = bench.sizes.cost_jobs
    table = bench.table("cost_worker")
    url = _app_url(bench.url)

    def enqueue() -> None:
        with JobQueue(url, table=table) as q:
            for i in range(jobs):
                q.enqueue("image", {**raw.PAYLOAD, "n": i})

    def drain_all() -> None:
        got = asyncio.run(drain(bench, _app_url(bench.async_url("psycopg")), table, concurrency=10))
        if len(got.seen) != jobs:
            raise RuntimeError(f"cost worker: drained {len(got.seen)} of {jobs}")

    return Variant(
        "worker",
        "psycopg",
        [table, *(table + c for c in ("_workers", "_limits"))],
        [("enqueue", enqueue), ("drain", drain_all)],
    )


def _raw(bench: Bench) -> Variant:
    jobs = bench.sizes.cost_jobs
    pg = raw.Postgres(bench)
    table = pg.create("cost")
    claim_sql, _, done_many = pg.claim_sql(table, BATCH)
    held: list[Any] = []

    def insert() -> None:
        with pg.connect(application_name=APP) as conn:
            for _ in range(jobs):
                conn.execute(pg.insert_sql(table), (pg.payload,)).fetchone()
                conn.commit()

    def claim() -> None:
        with pg.connect(application_name=APP) as conn:
            while len(held) < jobs:
                rows = conn.execute(claim_sql).fetchall()
                conn.commit()
                if not rows:
                    raise RuntimeError(f"cost raw: claimed {len(held)} of {jobs}")
                held.extend(r[0] for r in rows)

    def done() -> None:
        with pg.connect(application_name=APP) as conn:
            for chunk in _chunks(held, BATCH):
                conn.execute(done_many, (chunk,))
                conn.commit()

    return Variant(
        "raw",
        "raw",
        [table],
        [("enqueue", insert), ("claim", claim), ("complete", done)],
        cleanup=lambda: pg.drop(table),
    )


def _measure(bench: Bench, meter: Meter, v: Variant) -> dict[str, Any]:
    """Run the variant's phases; emit one result per phase; return the life's totals."""
    jobs = bench.sizes.cost_jobs
    relations = meter.relations(v.tables, v.tables[0])
    labels = {r.relid: r.label for r in relations.values()}
    kinds = {r.label: r.kind for r in relations.values()}
    life: dict[str, Any] = {"bytes": 0, "fpi_bytes": 0, "records": 0, "entries": Counter()}
    life["wal_bytes_server"] = 0
    mark = meter.mark(relations)
    for phase, body in v.phases:
        body()
        end = meter.mark(relations, end=True)
        extra: dict[str, Any] = {"variant": v.name, "phase": phase, "jobs": jobs}
        server = {k: end.wal[k] - mark.wal[k] for k in end.wal}
        extra["pg_stat_wal_per_job"] = {k: _per_job(n, jobs) for k, n in server.items()}
        extra["checkpoints"] = end.checkpoints - mark.checkpoints
        extra["tables"] = {
            labels[relid]: {k: n - mark.tables.get(relid, {}).get(k, 0) for k, n in s.items()}
            for relid, s in end.tables.items()
            if any(n - mark.tables.get(relid, {}).get(k, 0) for k, n in s.items())
        }
        extra["index_reads"] = {
            labels[relid]: {k: n - mark.indexes.get(relid, {}).get(k, 0) for k, n in s.items()}
            for relid, s in end.indexes.items()
            if s["idx_scan"] - mark.indexes.get(relid, {}).get("idx_scan", 0)
        }
        value = server["wal_bytes"] / jobs
        read = meter.wal(mark.lsn, end.lsn, relations) if meter.walinspect else None
        if read is not None:
            usage, commits = read
            total = sum(u.bytes for u in usage.values()) + commits.bytes
            fpi = sum(u.fpi_bytes for u in usage.values())
            value = total / jobs
            extra["source"] = "pg_walinspect: this table's relations and commits"
            extra["records_per_job"] = _per_job(
                sum(u.records for u in usage.values()) + commits.records, jobs
            )
            extra["fpi_bytes_per_job"] = _per_job(fpi, jobs)
            extra["bytes_without_fpi_per_job"] = _per_job(total - fpi, jobs)
            extra["commits_per_job"] = _per_job(commits.records, jobs)
            entries = {label: _entries(u) for label, u in usage.items() if kinds[label] == "index"}
            extra["index_entries_per_job"] = _per_job(sum(entries.values()), jobs)
            extra["per_relation"] = {
                label: {
                    "bytes_per_job": _per_job(u.bytes, jobs),
                    "fpi_bytes_per_job": _per_job(u.fpi_bytes, jobs),
                    "records_per_job": _per_job(u.records, jobs),
                    **(
                        {"entries_per_job": _per_job(entries[label], jobs)}
                        if label in entries
                        else {}
                    ),
                    # record type: [records, bytes] per job
                    "records": {
                        k: [_per_job(n, jobs), _per_job(u.type_bytes[k], jobs)]
                        for k, n in sorted(u.types.items())
                    },
                }
                for label, u in sorted(usage.items(), key=lambda kv: -kv[1].bytes)
            }
            extra["heap"] = _heap_counts(usage.get("table", Usage()))
            extra["commit_bytes_per_job"] = _per_job(commits.bytes, jobs)
            life["bytes"] += total
            life["fpi_bytes"] += fpi
            life["records"] += sum(u.records for u in usage.values()) + commits.records
            life["entries"].update(entries)
        else:
            why = (
                "pg_walinspect unavailable"
                if not meter.walinspect
                else "the window's WAL was removed before it was read"
            )
            extra["source"] = f"pg_stat_wal (the whole server's WAL: {why})"
            life["bytes"] += server["wal_bytes"]
        life["wal_bytes_server"] += server["wal_bytes"]
        t = extra["tables"].get("table", {})
        extra["hot_share"] = (
            round(t["n_tup_hot_upd"] / t["n_tup_upd"], 3) if t.get("n_tup_upd") else None
        )
        bench.emit(
            Result(f"cost_{v.name}_{phase}", value, "WAL bytes/job", driver=v.driver, extra=extra)
        )
        # Statistics as autovacuum would soon have them after a burst of enqueues, so that
        # the next phase's plans are those of a table in use; ANALYZE writes no WAL on the
        # table, and the next phase's window starts after it.
        meter.conn.execute(f'ANALYZE "{v.tables[0]}"')
        mark = meter.mark(relations)
    return life


def run(bench: Bench) -> None:
    if not bench.is_postgres:
        bench.note("cost: PostgreSQL only (WAL and its statistics)")
        return
    meter = Meter(bench)
    if not meter.walinspect:
        bench.note("cost: pg_walinspect unavailable: WAL bytes from pg_stat_wal (whole server)")
    jobs = bench.sizes.cost_jobs
    builders: list[Callable[[], Variant]] = [lambda: _raw(bench), lambda: _steps(bench, False)]
    if jobs >= 1_000:  # --quick leaves it out
        builders.append(lambda: _steps(bench, True))
    builders.append(lambda: _worker(bench))
    lives: dict[str, tuple[dict[str, Any], str]] = {}
    try:
        for build in builders:
            v = build()
            try:
                lives[v.name] = (_measure(bench, meter, v), v.driver)
            finally:
                v.cleanup()
    finally:
        meter.close()
    raw_life = lives["raw"][0]
    for name, (life, driver) in lives.items():
        extra = {
            "jobs": jobs,
            "records_per_job": _per_job(life["records"], jobs),
            "fpi_bytes_per_job": _per_job(life["fpi_bytes"], jobs),
            "bytes_without_fpi_per_job": _per_job(life["bytes"] - life["fpi_bytes"], jobs),
            "index_entries_per_job": _per_job(sum(life["entries"].values()), jobs),
            "index_entries_by_index": {
                k: _per_job(n, jobs) for k, n in sorted(life["entries"].items())
            },
            "pg_stat_wal_bytes_per_job": _per_job(life["wal_bytes_server"], jobs),
        }
        value = life["bytes"] / jobs
        if name == "raw":
            bench.ceiling("cost_raw", value, unit="WAL bytes/job", **extra)
            continue
        raw_plain = raw_life["bytes"] - raw_life["fpi_bytes"]
        extra["bytes_without_fpi_to_raw"] = (
            round((life["bytes"] - life["fpi_bytes"]) / raw_plain, 2) if raw_plain else None
        )
        raw_entries = sum(raw_life["entries"].values())
        extra["index_entries_to_raw"] = (
            round(sum(life["entries"].values()) / raw_entries, 2) if raw_entries else None
        )
        bench.emit(
            Result(
                f"cost_{name}",
                value,
                "WAL bytes/job",
                driver=driver,
                ceiling="cost_raw (lower is better)",
                ratio=value / (raw_life["bytes"] / jobs) if raw_life["bytes"] else None,
                extra=extra,
            )
        )
