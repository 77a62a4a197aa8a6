"""A worker process of the invariant drill (run as a script; the drill kills it for real).

Its one kind, ``drill``, follows the plan in the job's payload: ``plan[attempt - 1]`` (the
last entry for later attempts) says what this attempt does:

- ``ok``: a short sleep, a progress report, then the result;
- ``slow``: several progress reports over a longer sleep (room for a cancel or a kill);
- ``save_task_id``: saves a provider task id with ``ctx.save_remote_task_id``, then as ``ok``;
- ``raise``: fails the attempt with a retryable error (the job's policy retries it);
- ``permanent``: fails with an error marked ``retryable = False`` (failed at once);
- ``timeout``: sleeps far past the worker's ``job_timeout``;
- ``stall``: blocks the event loop (``time.sleep``) past the lease, for up to
  ``--stall`` seconds, as a long GC pause or a blocking call would, then as ``ok``;
- ``paid``: as a paid provider generation: unless the job has a task id saved already
  (which it resumes), has its lease confirmed (`WorkerContext.lease_confirmed`, as
  DefAPI's generator does before a paid request), submits a task (a ``submit`` line) and
  saves its id before going on (a ``saved`` line once written); then as ``ok``.

Every handler call appends one line to the ``--executions`` file when it starts and one
when it ends (whatever ends it), each a single ``O_APPEND`` write of a JSON object, so a
SIGKILL loses no line that was written and lines of several processes never interleave.
A process's own lines are in the order they happened (one event loop writes them), which
is what the drill's concurrency check reads.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import random
import signal
import sys
import time
from typing import Any

from jobqueue import AsyncJobQueue, Job
from jobqueue.worker import Worker, WorkerContext

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
KIND = "drill"


class DrillPermanent(Exception):
    """A planned failure that no later attempt can fix."""

    retryable = False


def planned_error(step: str, attempt: int) -> str:
    """The error a failed attempt stores when its plan step is ``step`` (``raise`` or
    ``permanent``), as the worker describes it (``Type: message``)."""
    if step == "raise":
        return f"RuntimeError: drill: planned failure of attempt {attempt}"
    return f"DrillPermanent: drill: planned permanent failure of attempt {attempt}"


def timeout_error(job_timeout: float) -> str:
    """The error a handler stopped by ``job_timeout`` stores."""
    return f"JobTimeout: the handler ran longer than {job_timeout:g}s"


def step_of(plan: list[str], attempt: int) -> str:
    return plan[min(attempt, len(plan)) - 1]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--executions", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--log", default=None)
    p.add_argument("--queues", default="default", help="comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--lease", type=float, default=5.0)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("--reap-interval", type=float, default=None)
    p.add_argument("--job-timeout", type=float, default=5.0)
    p.add_argument("--fast", type=float, default=0.05, help="ok steps sleep up to this long")
    p.add_argument("--slow", type=float, default=0.8, help="slow steps sleep up to this long")
    p.add_argument("--stall", type=float, default=0.0, help="stall steps block this long")
    p.add_argument("--retry-base", type=float, default=0.05)
    p.add_argument("--retry-cap", type=float, default=0.5)
    p.add_argument("--lock-timeout", type=float, default=None)
    p.add_argument("--command-timeout", type=float, default=None, help="default: the queue's")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    bounds: dict[str, float] = {}
    if args.command_timeout is not None:
        bounds["command_timeout"] = args.command_timeout
    queue = AsyncJobQueue(
        args.url,
        table=args.table,
        retry_backoff=(args.retry_base, args.retry_cap),
        lock_timeout=args.lock_timeout,
        **bounds,
    )
    fd = os.open(args.executions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(f"{args.seed}:{args.worker_id}")
    me = args.worker_id

    def record(event: str, job: Job, claim: str, **more: Any) -> None:
        line = {"event": event, "worker": me, "job": str(job.id), "attempt": job.attempts}
        line.update(claim=claim, wall=time.time(), **more)
        os.write(fd, (json.dumps(line) + "\n").encode())

    async def drill(job: Job, ctx: WorkerContext) -> dict[str, Any]:
        claim = job.started_at.isoformat() if job.started_at else "-"
        step = step_of(job.payload["plan"], job.attempts)
        record("start", job, claim, step=step)
        outcome = "ok"
        try:
            if step in ("ok", "save_task_id", "stall", "paid"):
                if step == "paid" and job.remote_task_id is None:
                    await ctx.lease_confirmed()
                    record("submit", job, claim)
                    await ctx.save_remote_task_id(f"paid-{job.id}-{job.attempts}")
                    record("saved", job, claim)
                if step == "save_task_id":
                    await ctx.save_remote_task_id(f"task-{job.id}-{job.attempts}")
                if step == "stall":
                    record("stall", job, claim)
                    pause = rng.uniform(min(args.lease * 1.05, args.stall), args.stall)
                    time.sleep(pause)  # noqa: ASYNC251 - the point: the loop stops
                    record("unstall", job, claim)
                await asyncio.sleep(rng.uniform(0, args.fast))
                await ctx.report_progress(50, "half way")
            elif step == "slow":
                total = rng.uniform(args.slow / 2, args.slow)
                for percent in (20, 40, 60, 80):
                    await asyncio.sleep(total / 4)
                    await ctx.report_progress(percent, f"{percent}%")
            elif step == "raise":
                await asyncio.sleep(rng.uniform(0, args.fast))
                raise RuntimeError(f"drill: planned failure of attempt {job.attempts}")
            elif step == "permanent":
                raise DrillPermanent(f"drill: planned permanent failure of attempt {job.attempts}")
            elif step == "timeout":
                await asyncio.sleep(args.job_timeout * 10)
            else:
                raise AssertionError(f"unknown plan step {step!r}")
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            why = ctx.stopped_because
            record("end", job, claim, outcome=outcome, stopped=why.value if why else None)
        return {"attempt": job.attempts, "worker": me, "claim": claim}

    worker = Worker(
        queue,
        {KIND: drill},
        concurrency=args.concurrency,
        queues=args.queues.split(","),
        lease=args.lease,
        poll_interval=args.poll_interval,
        worker_id=me,
        grace_period=args.grace,
        job_timeout=args.job_timeout,
        reap_interval=args.reap_interval,
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
        # SIGUSR1 writes every thread's stack next to the log: how the drill sees where a
        # process that does not exit is stuck.
        stacks = open(f"{args.log}.stacks", "w")  # noqa: SIM115 - open for the process's life
        faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO, format=LOG_FORMAT)
    else:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main(sys.argv[1:])
