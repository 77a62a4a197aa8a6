"""A worker process for the partition drill: image jobs through `DefAPIGenerator` on a fake
DefAPI (its address and key in ``--defapi-url`` / ``--defapi-key``), with a short lease and
``command_timeout``, so that a silent network to PostgreSQL is noticed within seconds.

It takes the flags `tests.reliability.conftest.Workers` passes to every worker process
(``--executions`` is unused: the drill audits the table and the fake's submissions)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from jobqueue import AsyncJobQueue, DefAPIGenerator
from jobqueue.worker import Worker

from .worker_process import LOG_FORMAT


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--executions", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--log", default=None)
    p.add_argument("--defapi-url", required=True)
    p.add_argument("--defapi-key", required=True)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--command-timeout", type=float, default=1.0)
    p.add_argument("--poll-interval", type=float, default=0.2)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    queue = AsyncJobQueue(
        args.url, table=args.table, lease=args.lease, command_timeout=args.command_timeout
    )
    generator = DefAPIGenerator(args.defapi_key, base_url=args.defapi_url, poll_interval=0.1)
    worker = Worker(
        queue,
        generator=generator,
        concurrency=args.concurrency,
        lease=args.lease,
        poll_interval=args.poll_interval,
        worker_id=args.worker_id,
        grace_period=1.0,
    )
    worker.install_signal_handlers()
    try:
        await worker.run()
    finally:
        await generator.aclose()
        await queue.close()


def main(argv: list[str]) -> None:
    args = parse(argv)
    logging.basicConfig(
        **({"filename": args.log} if args.log else {"stream": sys.stderr}),
        level=logging.INFO,
        format=LOG_FORMAT,
    )
    asyncio.run(serve(args))
