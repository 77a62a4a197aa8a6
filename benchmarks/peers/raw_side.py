"""PostgreSQL itself as a column of the peer comparison: each workload as the bare SQL a
hand-written queue would send (plain psycopg on a 4-column table with one partial index,
`benchmarks.raw`), interleaved with the libraries like a peer. It is the ceiling of the
run: what the same server gives the same workload with no library at all, so a ratio to a
peer can be read against what the server allows.

- ``drain`` at concurrency c: one connection claims up to c rows (``FOR UPDATE SKIP
  LOCKED``), commits, marks them done, commits, until the table is empty;
- ``enqueue_one``: one INSERT and its commit per job;
- ``enqueue_batch``: one COPY of every row and its commit;
- ``pickup``: commit an INSERT and a NOTIFY, wait on LISTEN, claim the row and commit
  (`raw.RawPickup`), timed from the commit returning.
"""

from __future__ import annotations

import json
from typing import Any

from .. import raw
from ..common import Bench
from . import harness

NAME = "raw"
TITLE = "PostgreSQL, bare SQL"
DRIVER = "psycopg"


def run(bench: Bench, task: harness.Task) -> dict[str, Any]:
    """One run of ``task`` in bare SQL, as a peer script's JSON line."""
    pg = raw.Postgres(bench)
    fields: dict[str, Any] = {"peer": NAME, "version": "", "driver": DRIVER}
    if task.kind == harness.PICKUP:
        pickup = raw.RawPickup(bench)
        try:
            for _ in range(task.jobs + harness.WARMUP):
                pickup.sample()
            with pg.connect() as conn:
                claimed = conn.execute(
                    f"SELECT count(*) FROM \"{pickup.table}\" WHERE status = 'processing'"
                ).fetchone()
        finally:
            pickup.close()
        samples = pickup.samples[harness.WARMUP :]
        return harness.result(task, rows=claimed[0] if claimed else 0, samples=samples, **fields)
    if task.kind == harness.DRAIN:
        table = pg.filled(f"peer_drain{task.concurrency}", task.jobs)
        with harness.Stopwatch() as timed:
            pg.claim_loop(table, task.concurrency)()
        done = "status = 'done'"
    else:
        table = pg.create(f"peer_{task.kind}")
        with pg.connect() as conn:
            pg.insert_each(conn, table, 1)  # connect and warm up outside the timing
            if task.kind == harness.ENQUEUE_ONE:
                with harness.Stopwatch() as timed:
                    pg.insert_each(conn, table, task.jobs)
            else:
                payloads = [json.dumps(harness.payload(i)) for i in range(task.jobs)]
                with harness.Stopwatch() as timed:
                    pg.copy_in(conn, table, payloads)
        done = "true"
    with pg.connect() as conn:
        row = conn.execute(f'SELECT count(*) FROM "{table}" WHERE {done}').fetchone()
    pg.drop(table)
    return harness.result(task, rows=row[0] if row else 0, **timed.fields(), **fields)
