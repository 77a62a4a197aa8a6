"""Where the client time of one `enqueue` goes on PostgreSQL, layer by layer.

``python -m benchmarks.enqueue_layers postgresql://...`` runs the same single-job INSERT
through ever more of the queue's machinery, in blocks that take turns (each block's order
reversed every round, so that a machine whose load changes charges every layer alike), and
prints each layer's median and lowest client CPU per call (`time.process_time`: this
process, every thread). CPU rather than wall time: on a shared machine the wall time is
mostly the server's flush of each commit, which every layer pays alike.

The layers, each adding one thing to the one before:

- ``direct_held``: the fast path's statement (`jobqueue.drivers.direct`) on a connection
  held for the whole run, the row checked as `enqueue` checks it;
- ``checkout``: a connection taken from the queue's autocommit view of its pool and given
  back for each statement (what every operation on a connection of the queue's own does);
- ``deadline``: the operation's deadline armed around the statement
  (`jobqueue.drivers.deadline`);
- ``operation`` (async only): the enqueue operation run by ``_run``, as `enqueue` runs it;
- ``enqueue``: the public call (which, consecutive, runs on the queue's spare connection
  since the fifth enqueue pass: no checkout per call, docs/performance.md);
- ``enqueue_held`` (async only): the public call inside ``_on_held``, the scope in which a
  task keeps one connection from one operation to the next (the worker's completer uses
  it): what the calls would cost without a checkout each.

Private names are used on purpose: this measures the layers between them. Each run makes
its two tables and drops them at the end.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import create_engine, text

from jobqueue import AsyncJobQueue, JobQueue, migrate
from jobqueue import operations as ops
from jobqueue.drivers.deadline import async_deadline, sync_deadline
from jobqueue.drivers.direct import run_direct, run_direct_async
from jobqueue.operations import Access
from jobqueue.queue import Held
from jobqueue.sql.table import companion_table_names, version_table

BLOCK = 200
ROUNDS = 10
PAYLOAD = {"prompt": "a cat"}
SEEN = "{:14s} median {:5.0f}  lowest {:5.0f} us CPU per enqueue"


def _report(title: str, runs: dict[str, list[float]]) -> None:
    print(title)
    for name, values in runs.items():
        print(SEEN.format(name, statistics.median(values), min(values)))


def _alternate(layers: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {name: [] for name in layers}
    for r in range(ROUNDS):
        order = list(layers.items())
        for name, layer in order if r % 2 == 0 else reversed(order):
            start = time.process_time()
            layer()
            runs[name].append((time.process_time() - start) / BLOCK * 1e6)
    return runs


def sync_layers(url: str, table: str) -> dict[str, list[float]]:
    with JobQueue(url, table=table) as q:
        q.enqueue("image", PAYLOAD)  # the permission look-up and the prepare, untimed
        engine = q._plans[Access.ONE_WRITE].engine
        held = engine.connect()

        def insert() -> Any:
            return q.statements.insert_many(q._enqueue_rows("image", PAYLOAD, {}), guard=False)

        def direct_held() -> None:
            for _ in range(BLOCK):
                run_direct(held, insert())

        def checkout() -> None:
            for _ in range(BLOCK):
                with engine.connect() as conn:
                    run_direct(conn, insert())

        def deadline() -> None:
            for _ in range(BLOCK):
                with engine.connect() as conn, sync_deadline(conn, 30.0):
                    run_direct(conn, insert())

        def enqueue() -> None:
            for _ in range(BLOCK):
                q.enqueue("image", PAYLOAD)

        try:
            return _alternate({f.__name__: f for f in (direct_held, checkout, deadline, enqueue)})
        finally:
            held.close()


async def async_layers(url: str, table: str) -> dict[str, list[float]]:
    async with AsyncJobQueue(url, table=table) as q:
        await q.enqueue("image", PAYLOAD)
        engine = q._plans[Access.ONE_WRITE].engine
        held = await engine.connect().start()

        def insert() -> Any:
            return q.statements.insert_many(q._enqueue_rows("image", PAYLOAD, {}), guard=False)

        async def direct_held() -> None:
            for _ in range(BLOCK):
                await run_direct_async(held, insert())

        async def checkout() -> None:
            for _ in range(BLOCK):
                conn = await engine.connect().start()
                await run_direct_async(conn, insert())
                await conn.close()

        async def deadline() -> None:
            for _ in range(BLOCK):
                conn = await engine.connect().start()
                with async_deadline(conn, 30.0):
                    await run_direct_async(conn, insert())
                await conn.close()

        async def operation() -> None:
            for _ in range(BLOCK):
                rows = q._enqueue_rows("image", PAYLOAD, {})
                await q._run(ops.enqueue_many(q.statements, rows, q._placement))

        async def enqueue() -> None:
            for _ in range(BLOCK):
                await q.enqueue("image", PAYLOAD)

        kept = Held(q)

        async def enqueue_held() -> None:
            with q._on_held(kept):
                for _ in range(BLOCK):
                    await q.enqueue("image", PAYLOAD)

        layers: list[Callable[[], Awaitable[None]]] = [
            direct_held,
            checkout,
            deadline,
            operation,
            enqueue,
            enqueue_held,
        ]
        runs: dict[str, list[float]] = {f.__name__: [] for f in layers}
        try:
            for r in range(ROUNDS):
                for layer in layers if r % 2 == 0 else reversed(layers):
                    start = time.process_time()
                    await layer()
                    runs[layer.__name__].append((time.process_time() - start) / BLOCK * 1e6)
        finally:
            await kept.let_go()
            await held.close()
        return runs


def _drop(url: str, tables: list[str]) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in tables:
            for name in (table, *companion_table_names(table), version_table(table)):
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
            conn.execute(text(f'DROP FUNCTION IF EXISTS "{table}_notify"()'))
    engine.dispose()


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].startswith("postgresql"):
        raise SystemExit("usage: python -m benchmarks.enqueue_layers postgresql://...")
    url = argv[0].replace("postgresql://", "postgresql+psycopg://", 1)
    tables = ["layers_sync", "layers_async"]
    for table in tables:
        migrate(url, table=table)
    try:
        _report("JobQueue (psycopg)", sync_layers(url, tables[0]))
        _report("AsyncJobQueue (psycopg)", asyncio.run(async_layers(url, tables[1])))
    finally:
        _drop(url, tables)


if __name__ == "__main__":
    main(sys.argv[1:])
