"""A real worker process for the fault tests (run as a script; the tests kill it for real).

Its handler (kind ``work``) appends one line per execution to ``--executions`` with a single
``O_APPEND`` write (atomic, and on disk the moment it returns, so a SIGKILL cannot lose it),
sleeps a little, and returns which attempt of which worker produced the result. The fault
tests compare those lines with the jobs table: every job executed at least once, each
claim (an attempt, told apart from a released one of the same number by its start) at
most once, and the stored result always from the job's last holder.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
from typing import Any

from jobqueue import AsyncJobQueue, Job
from jobqueue.worker import Worker, WorkerContext

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--executions", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--log", default=None)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--sleep", type=float, default=0.1, help="handler sleeps up to this long")
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("--no-listen", action="store_true")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    queue = AsyncJobQueue(args.url, table=args.table)
    fd = os.open(args.executions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random()

    async def work(job: Job, ctx: WorkerContext) -> dict[str, Any]:
        claim = job.started_at.isoformat() if job.started_at else "-"
        os.write(fd, f"{job.id} {job.attempts} {args.worker_id} {claim}\n".encode())
        if args.sleep > 0:
            await asyncio.sleep(rng.uniform(args.sleep / 2, args.sleep))
        return {"attempt": job.attempts, "worker": args.worker_id}

    worker = Worker(
        queue,
        {"work": work},
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=args.poll_interval,
        listen=not args.no_listen,
        worker_id=args.worker_id,
        grace_period=args.grace,
    )
    worker.install_signal_handlers()
    try:
        await worker.run()
    finally:
        os.close(fd)
        await queue.close()


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO, format=LOG_FORMAT)
    else:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
