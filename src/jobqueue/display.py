"""How jobs look in a terminal: rich tables for jobs and statistics, live progress bars.

The CLI and the demo share these, so a job reads the same wherever it is shown. Nothing
here talks to the database; callers pass `Job` snapshots in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .database import END_OF_TIME, START_OF_TIME
from .operations import StatusStats
from .presence import LiveWorker
from .schema import Job, Status

#: One colour per status, so a glance at a table says how things stand.
STATUS_STYLE: dict[Status, str] = {
    Status.PENDING: "yellow",
    Status.PROCESSING: "cyan",
    Status.COMPLETED: "green",
    Status.FAILED: "red",
    Status.CANCELLED: "magenta",
}


def status_text(status: Status) -> Text:
    return Text(status.value, style=STATUS_STYLE[status])


def when(value: datetime | None) -> str:
    """A timestamp in the local time zone, to the second (the database keeps UTC); the
    end and the start of time (how a time at infinity reads) as ``infinity``."""
    if value is None:
        return "-"
    if value == END_OF_TIME:
        return "infinity"
    if value == START_OF_TIME:
        return "-infinity"
    try:
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except OverflowError:  # within a day of the end or start of time: no local time exists
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def job_summary(job: Job) -> str:
    """What a job produced or why it stopped, in one short line."""
    if job.status is Status.COMPLETED:
        # Imported here: the generators package brings httpx, which listing jobs never needs.
        from .generators.base import GenerationResult

        images = GenerationResult.of_job(job).images
        if images:
            return images[0] + (f" (+{len(images) - 1} more)" if len(images) > 1 else "")
        return "result saved" if job.result is not None else ""
    if job.error and job.status in (Status.FAILED, Status.CANCELLED, Status.PENDING):
        return job.error.splitlines()[0] if job.error.strip() else ""
    return job.progress_message or ""


def jobs_table(jobs: Sequence[Job], *, title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("kind")
    table.add_column("queue")
    table.add_column("status", no_wrap=True)
    table.add_column("progress", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("result / error", overflow="fold")
    for job in jobs:
        table.add_row(
            str(job.id),
            job.kind,
            job.queue,
            status_text(job.status),
            f"{job.progress}%",
            f"{job.attempts}/{job.max_attempts}",
            when(job.created_at),
            seconds(job.duration),
            job_summary(job),
        )
    return table


def job_details(job: Job) -> Table:
    """Every field of one job, one per line, for `jobqueue status`."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("id", str(job.id)),
        ("status", status_text(job.status)),
        ("kind", job.kind),
        ("queue", job.queue),
        (
            "progress",
            f"{job.progress}%" + (f"  {job.progress_message}" if job.progress_message else ""),
        ),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("owner", job.owner_id or "-"),
        ("idempotency key", job.idempotency_key or "-"),
        ("created", when(job.created_at)),
        ("run at", when(job.run_at)),
        ("started", when(job.started_at)),
        ("completed", when(job.completed_at)),
        ("took", seconds(job.duration)),
        ("locked by", job.locked_by or "-"),
        ("lease expires", when(job.lease_expires_at)),
        ("remote task", job.remote_task_id or "-"),
        ("result url", job.result_url or "-"),
        ("error", job.error or "-"),
    ]
    if job.unreadable is not None:
        rows.append(("unreadable", job.unreadable))
    for name, value in rows:
        table.add_row(name, value)
    for entry in job.errors:
        if not isinstance(entry, dict):  # a client wrote the history: show what it holds
            table.add_row("error history", repr(entry))
            continue
        table.add_row(
            "error history",
            f"attempt {entry.get('attempt', '?')} at {entry.get('at', '?')}: {entry.get('error')}",
        )
    return table


def stats_table(stats: Iterable[StatusStats], *, title: str | None = None) -> Table:
    """The seed's statistics query as a table: count and mean duration per status."""
    table = Table(title=title, header_style="bold")
    table.add_column("status")
    table.add_column("count", justify="right")
    table.add_column("avg duration", justify="right")
    total = 0
    for line in stats:
        total += line.count
        table.add_row(status_text(line.status), str(line.count), seconds(line.avg_duration_sec))
    table.add_section()
    table.add_row("total", str(total), "")
    return table


class JobBars:
    """Live progress bars, one per job, that follow the snapshots they are given.

    Used as a context manager around a polling loop: `track` a job once, then `update`
    with each fresh snapshot. The bar's label carries the status, so a job is seen moving
    from pending to processing to its final status.
    """

    def __init__(self, console: Console, *, label_width: int = 32) -> None:
        self.label_width = label_width
        self.progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[UUID, TaskID] = {}

    def __enter__(self) -> JobBars:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def _label(self, job: Job, label: str | None) -> str:
        text = label or f"{job.kind} {str(job.id)[:8]}"
        if len(text) > self.label_width:
            text = text[: self.label_width - 1] + "…"
        return text.ljust(self.label_width)

    def track(self, job: Job, label: str | None = None) -> None:
        self.tasks[job.id] = self.progress.add_task(
            self._label(job, label), total=100, status="", start=False
        )
        self.update(job)

    def update(self, job: Job) -> None:
        task = self.tasks[job.id]
        style = STATUS_STYLE[job.status]
        shown = job.progress_message if job.status is Status.PROCESSING else None
        note = f" {escape(shown)}" if shown else ""
        if job.status is Status.PROCESSING or job.is_final:
            self.progress.start_task(task)
        done = 100 if job.status is Status.COMPLETED else job.progress
        self.progress.update(task, completed=done, status=f"[{style}]{job.status.value}[/]{note}")
        if job.is_final:
            self.progress.stop_task(task)


def workers_table(workers: Sequence[LiveWorker]) -> Table:
    """The live workers, for `jobqueue workers`: what each serves and when it last beat."""
    table = Table(header_style="bold")
    table.add_column("worker", overflow="fold")
    table.add_column("queues", overflow="fold")
    table.add_column("kinds", overflow="fold")
    table.add_column("concurrency", justify="right")
    table.add_column("started", no_wrap=True)
    table.add_column("last beat", justify="right", no_wrap=True)
    for w in workers:
        table.add_row(
            w.worker_id,
            ", ".join(w.queues),
            "*" if w.kinds is None else ", ".join(w.kinds),
            str(w.concurrency),
            when(w.started_at),
            f"{seconds(w.beat_age)} ago",
        )
    return table
