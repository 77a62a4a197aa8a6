"""`jobqueue demo`: the whole life of a job, watched live, on a fresh machine.

A batch of image jobs goes into a SQLite file, a worker with the mock generator runs them
in this process, and progress bars show each job move from pending to processing to
completed; then the statistics `jobqueue stats` shows. No network, no settings, and
nothing left behind but the database file (the worker writes no log file; SQLite's
-wal/-shm go when it closes).
"""

from __future__ import annotations

import asyncio

from rich.console import Console

from .._console import closing
from ..drivers.engines import describe_database, describe_url, sqlite_path
from ..generators.base import IMAGE_KIND, GenerationRequest
from ..generators.mock import MockGenerator
from ..migrations import migrate
from ..models import Job, Status
from ..operations import NewJob
from ..queue import AsyncJobQueue
from .output import JobBars, render_stats

DEMO_URL = "sqlite:///jobqueue-demo.db"
DEMO_OWNER = "demo"

PROMPTS = (
    "a lighthouse made of lego bricks at dusk",
    "a red fox reading a newspaper in a cafe",
    "an isometric tiny city on a floating island",
    "a watercolour of a tram in the rain",
    "a robot watering tomatoes on a balcony",
    "a paper-cut mountain range under the northern lights",
    "a cat astronaut planting a flag on the moon",
    "a stained-glass portrait of a sleepy owl",
)

#: How often the demo looks at its jobs (it only reads; the worker does the writing).
REFRESH = 0.2


async def _snapshot(queue: AsyncJobQueue, batch: list[Job]) -> list[Job]:
    """The batch as it is now, in one query (SQLite has one writer; the worker comes first).

    The batch is the newest demo jobs, so the newest ``len(batch)`` of the demo owner's jobs
    hold all of it; any that are not (another demo running at once) are looked up by id.
    """
    recent = await queue.list(owner_id=DEMO_OWNER, limit=len(batch))
    by_id = {job.id: job for job in recent}
    return [by_id.get(job.id) or await queue.get(job.id) for job in batch]


async def run_demo(
    url: str = DEMO_URL,
    *,
    table: str,
    schema: str | None = None,
    jobs: int = 8,
    concurrency: int = 4,
    delay: float = 3.0,
    console: Console,
) -> list[Job]:
    """Run the demo and return the jobs as they ended."""
    from ..worker import Worker

    await asyncio.to_thread(migrate, url, table=table, schema=schema)
    queue = AsyncJobQueue(url, table=table, schema=schema)
    shown = describe_database(url)  # never with its password; a SQLite file's whole path
    # The command to look around, from any directory: a SQLite file by its absolute path.
    path = sqlite_path(url)
    again = describe_url(f"sqlite:///{path}" if path is not None else url)
    generator = MockGenerator(delay=delay, steps=5)
    try:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(jobs)]
        batch = await queue.enqueue_many(
            NewJob(
                kind=IMAGE_KIND,
                payload=GenerationRequest(prompt, model="mock").to_payload(),
                owner_id=DEMO_OWNER,
            )
            for prompt in prompts
        )
        console.print(
            f"Enqueued {len(batch)} image jobs in {shown} — each got its id at once; "
            f"a worker runs {concurrency} at a time with the mock generator.",
            soft_wrap=True,
            markup=False,
        )
        worker = Worker(
            queue,
            generator=generator,
            concurrency=concurrency,
            poll_interval=REFRESH,
            listen=False,
        )
        with JobBars(console) as bars:
            for job in batch:
                bars.track(job)  # labelled with its prompt
            running = asyncio.create_task(worker.run_until_idle())
            while True:
                done, _ = await asyncio.wait({running}, timeout=REFRESH)
                latest = await _snapshot(queue, batch)
                for job in latest:
                    bars.update(job)
                if done:
                    break
            await running
        stats = await queue.stats()
    finally:
        closing()
        await generator.aclose()
        await queue.close()
    console.print(render_stats(stats, title="Jobs created in the last day (jobqueue stats)"))
    finished = sum(1 for j in latest if j.status is Status.COMPLETED)
    console.print(
        f"{finished} of {len(latest)} jobs completed. Look around with "
        f"`jobqueue --database-url {again} list` or `... status ID`; run your own with "
        '`jobqueue migrate`, `jobqueue worker` and `jobqueue generate "a prompt"`.',
        soft_wrap=True,
        markup=False,
    )
    return latest
