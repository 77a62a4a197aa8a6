"""How jobs look in a terminal: the console, JSON output, durations, rich tables for jobs,
statistics, workers and limits, what is paused, live progress bars.

Every command and the demo show jobs through these, so a job reads the same wherever it
is shown. Nothing here talks to the database; callers pass `Job` snapshots in.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import UUID

import click
from rich import box
from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.markup import escape
from rich.measure import Measurement
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

from ..models import END_OF_TIME, START_OF_TIME, Job, Position, Status
from .group import one_line

if TYPE_CHECKING:
    # Annotations only: a command that never shows statistics or workers need not load
    # the operations behind them to start.
    from ..models import Limit, LiveWorker
    from ..operations import StatusStats


@cache
def out() -> Console:
    """The console for results (stdout)."""
    return Console(highlight=False)


def echo_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (what ``--json`` prints)."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# -- durations --------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``45s``, ``30m``, ``12h``, ``1d``, ``2w``, combinations such as ``1h30m``, or a plain
    number of seconds."""
    value = text.strip().lower()
    try:
        plain = float(value)
    except ValueError:
        pass
    else:
        if plain >= 0 and plain == plain and plain != float("inf"):
            return timedelta(seconds=plain)
        raise ValueError(f"{text!r} is not a duration")
    if not _DURATION.fullmatch(value):
        raise ValueError(f"{text!r} is not a duration")
    return timedelta(
        seconds=sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    )


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A click type for `parse_duration`; a bad value is a usage error (exit 2)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except (ValueError, OverflowError):
            self.fail(f"{value!r} is not a duration such as 45s, 30m, 12h, 1d or 7d", param, ctx)


DURATION = Duration()


def format_duration(delta: timedelta) -> str:
    """A duration as an option takes it: ``7d``, ``12h``, ``30m``, ``1.5s``."""
    secs = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{secs:g}s"


# -- jobs -------------------------------------------------------------------------------

#: One colour per status, so a glance at a table says how things stand.
STATUS_STYLE: dict[Status, str] = {
    Status.PENDING: "yellow",
    Status.PROCESSING: "cyan",
    Status.COMPLETED: "green",
    Status.FAILED: "red",
    Status.CANCELLED: "magenta",
    Status.EXPIRED: "bright_black",
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
        from ..generators.base import GenerationResult

        images = GenerationResult.of_job(job).images
        if images:
            return images[0] + (f" (+{len(images) - 1} more)" if len(images) > 1 else "")
        return "result saved" if job.result is not None else ""
    if job.status is Status.EXPIRED:
        return f"not started by its deadline ({when(job.start_by)})"
    if job.error and job.status in (Status.FAILED, Status.CANCELLED, Status.PENDING):
        return job.error.splitlines()[0] if job.error.strip() else ""
    return job.progress_message or ""


def job_label(job: Job) -> str:
    """What a watched job is called: its prompt, or its kind and id."""
    prompt = job.payload.get("prompt") if isinstance(job.payload, dict) else None
    return str(prompt) if prompt else f"{job.kind} {job.id}"


def job_outcome(job: Job) -> str:
    """How a finished job ended, in one line: its id, how long it took, what it produced."""
    took = f" after {seconds(job.duration)}" if job.duration is not None else ""
    return f"job {job.id}{took} {job_summary(job)}".rstrip()


#: Columns are added only while the result / error column keeps this many cells.
RESULT_MIN_WIDTH = 32
#: Cells between two columns of the jobs table.
COLUMN_GAP = 2


@dataclass(frozen=True)
class _Column:
    name: str
    cell: Callable[[Job], str | Text]
    justify: JustifyMethod = "left"


def _short_when(value: datetime | None) -> str:
    """`when` without the year and seconds (the year when it is not this one)."""
    if value is None:
        return "-"
    local = value.astimezone()
    if local.year != datetime.now().astimezone().year:
        return local.strftime("%Y-%m-%d")
    return local.strftime("%m-%d %H:%M")


#: The jobs table's columns in table order. Id, status and result / error are always
#: shown; the others (`_WANTED`, most wanted first) as long as they fit the terminal.
_COLUMNS: dict[str, tuple[_Column, _Column]] = {
    # name: (as shown to fit, as shown by --wide)
    "id": (_Column("id", lambda j: str(j.id)),) * 2,
    "status": (_Column("status", lambda j: status_text(j.status)),) * 2,
    "created": (
        _Column("created", lambda j: _short_when(j.created_at)),
        _Column("created", lambda j: when(j.created_at)),
    ),
    "kind": (_Column("kind", lambda j: j.kind),) * 2,
    "attempts": (_Column("attempts", lambda j: f"{j.attempts}/{j.max_attempts}", "right"),) * 2,
    "progress": (_Column("progress", lambda j: f"{j.progress}%", "right"),) * 2,
    "took": (_Column("took", lambda j: seconds(j.duration), "right"),) * 2,
    "queue": (_Column("queue", lambda j: j.queue),) * 2,
    "result / error": (_Column("result / error", lambda j: job_summary(j)),) * 2,
}
_ORDER = tuple(_COLUMNS)
_WANTED = ("created", "kind", "attempts", "progress", "took", "queue")
#: No single cell of these may take more than this (a 200-character kind or queue name).
_CELL_CAP = 16


def _width(column: _Column, jobs: Sequence[Job]) -> int:
    """The widest cell of ``column`` (or its header), in terminal cells."""
    cells = [column.cell(job) for job in jobs]
    widest = max((cell_len(c.plain if isinstance(c, Text) else c) for c in cells), default=0)
    return max(widest, cell_len(column.name))


def render_jobs(
    jobs: Sequence[Job], *, width: int = 80, wide: bool = False, title: str | None = None
) -> Table:
    """Jobs as a table at most ``width`` cells wide, one line per job.

    Columns are added by how much they are wanted (`_WANTED`) while they fit beside the
    id, the status and a result / error column of `RESULT_MIN_WIDTH`; long names are cut
    with an ellipsis, URLs in the middle (their host and file name stay). ``wide`` shows
    every column in full, however wide that is.
    """
    variant = 1 if wide else 0
    widths = {name: _width(_COLUMNS[name][variant], jobs) for name in _ORDER}
    if wide:
        names = set(_ORDER)
    else:
        for name in _WANTED:
            widths[name] = min(widths[name], _CELL_CAP)
        names = {"id", "status", "result / error"}
        used = widths["id"] + widths["status"] + 2 * COLUMN_GAP
        result = min(RESULT_MIN_WIDTH, widths["result / error"])
        for name in _WANTED:
            if used + widths[name] + COLUMN_GAP + result <= width:
                names.add(name)
                used += widths[name] + COLUMN_GAP
        # The result / error column takes the rest of the line (what it needs at most).
        widths["result / error"] = max(1, min(widths["result / error"], width - used))
    table = Table(
        title=title,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, COLUMN_GAP - 1, 0, 0),  # with the box's one-cell divider: COLUMN_GAP
    )
    chosen = [_COLUMNS[name][variant] for name in _ORDER if name in names]
    for column in chosen:
        table.add_column(
            column.name,
            justify=column.justify,
            no_wrap=True,
            overflow="ellipsis",
            width=widths[column.name],
        )
    for job in jobs:
        cells: list[Any] = []
        for column in chosen:
            value = column.cell(job)
            if (
                column.name == "result / error"
                and "progress" not in names  # it has no column of its own: say it here
                and job.status is Status.PROCESSING
            ):
                value = f"{job.progress}% {value}".rstrip()
            cells.append(Shortened(value) if isinstance(value, str) else value)
        table.add_row(*cells)
    return table


class Shortened:
    """Text that fits the width its cell gets on one line: a URL loses the middle of its
    path (its host and file name stay readable), other text its end, for an ellipsis."""

    def __init__(self, text: str) -> None:
        self.text = " ".join(text.split())

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        full = cell_len(self.text)
        return Measurement(min(full, 8), full)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(shorten(self.text, options.max_width), no_wrap=True, overflow="crop")


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells with an ellipsis: in the middle of a URL it
    starts with (the host and the file name stay as long as there is room), at the end of
    anything else."""
    if cell_len(text) <= width:
        return text
    url, space, rest = text.partition(" ")
    scheme, sep, after = url.partition("://")
    host, slash, path = after.partition("/")
    if sep and slash:
        head = cell_len(f"{scheme}{sep}{host}/")
        name = cell_len(path.rpartition("/")[2]) + 1
        # The rest of the line (" (+2 more)") goes first when the URL needs the room.
        for after_url in (f"{space}{rest}", ""):
            room = width - cell_len(after_url) - 1  # one cell for the ellipsis
            if room >= head + name or (not after_url and room >= 12):
                tail = max(room - head, min(name, room // 2))
                return f"{set_cell_size(url, room - tail)}…{_last_cells(url, tail)}{after_url}"
    return set_cell_size(text, max(0, width - 1)) + "…"[: max(0, width)]


def _last_cells(text: str, width: int) -> str:
    """The end of ``text`` that fits in ``width`` cells."""
    out: list[str] = []
    used = 0
    for char in reversed(text):
        used += cell_len(char)
        if used > width:
            break
        out.append(char)
    return "".join(reversed(out))


def job_details(job: Job, position: Position | None = None) -> Table:
    """Every field of one job, one per line, for `jobqueue status`; with ``position``,
    where it stands in the line (``3rd in line · about 40 s``) under its status."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("id", str(job.id)),
        ("status", status_text(job.status)),
        *([("in line", position.describe())] if position and position.describe() else []),
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
        ("start by", when(job.start_by)),
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
        at = entry.get("at", "?")
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            at = when(datetime.fromisoformat(at))  # ISO 8601 UTC: shown as local time
        table.add_row(
            "error history", f"attempt {entry.get('attempt', '?')} at {at}: {entry.get('error')}"
        )
    return table


def render_stats(
    stats: Iterable[StatusStats], *, title: str | None = None, by: str | None = None
) -> Table:
    """The statistics (`JobQueue.stats`) as a table: count, mean duration and cost per
    status (and ``by`` kind or owner), with the jobs that cost money ("paid") and the
    total cost per unit."""
    lines = list(stats)
    table = Table(title=title, header_style="bold")
    table.add_column("status")
    if by is not None:
        table.add_column(by)
    table.add_column("count", justify="right")
    table.add_column("avg duration", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("paid", justify="right")
    total = 0
    costs: dict[str | None, Decimal] = {}
    for line in lines:
        total += line.count
        group = [] if by is None else [str((line.kind if by == "kind" else line.owner_id) or "-")]
        table.add_row(
            status_text(line.status),
            *group,
            str(line.count),
            seconds(line.avg_duration_sec),
            cost_text(line.cost, line.cost_unit) if line.cost_unit else "",
            str(line.charged) if line.charged else "",
        )
        if line.cost_unit is not None:
            costs[line.cost_unit] = costs.get(line.cost_unit, Decimal(0)) + line.cost
    table.add_section()
    spent = ", ".join(cost_text(amount, unit) for unit, amount in sorted(costs.items()))
    table.add_row(
        "total",
        *([""] if by is not None else []),
        str(total),
        "",
        spent,
        str(sum(line.charged for line in lines) or ""),
    )
    return table


def cost_text(amount: Decimal, unit: str | None) -> str:
    """An amount and its unit: ``0.04 USD``."""
    return f"{amount} {unit}" if unit else str(amount)


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

    def _fitted(self, text: str) -> str:
        """``text`` cut or padded to the label column's width."""
        if len(text) > self.label_width:
            text = text[: self.label_width - 1] + "…"
        return text.ljust(self.label_width)

    def track(self, job: Job) -> None:
        """Add a bar for ``job``, labelled with `job_label`."""
        self.tasks[job.id] = self.progress.add_task(
            self._fitted(job_label(job)), total=100, status="", start=False
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


def render_workers(workers: Sequence[LiveWorker]) -> Table:
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


# -- limits and pauses ------------------------------------------------------------------


def utc_time(value: datetime, today: datetime | None = None) -> str:
    """A time in UTC to the second, with its date unless it falls on ``today`` (UTC): the
    database keeps UTC, and a pause is read against other hosts' clocks and logs."""
    utc = value.astimezone(UTC)
    day = (today or datetime.now(UTC)).astimezone(UTC).date()
    return utc.strftime("%H:%M:%S" if utc.date() == day else "%Y-%m-%d %H:%M:%S")


def pause_text(limit: Limit) -> str:
    """Since when a queue or key is paused, until when and why, in one line:
    ``queue default since 14:02:11 UTC (until 14:12:11, reason: …)``."""
    since = f" since {utc_time(limit.paused_at)} UTC" if limit.paused_at else ""
    until = f"until {utc_time(limit.paused_until)}" if limit.paused_until else "until resumed"
    reason = f", reason: {limit.pause_reason}" if limit.pause_reason else ""
    return one_line(f"{limit.scope} {limit.name}{since} ({until}{reason})")


def paused_now(limits: Iterable[Limit]) -> list[Limit]:
    """The queues and keys whose pause is running now, in the order listed."""
    return [limit for limit in limits if limit.paused]


def paused_lines(limits: Iterable[Limit]) -> list[str]:
    """One ``paused: …`` line per queue or key paused now (none when nothing is)."""
    return [f"paused: {pause_text(limit)}" for limit in paused_now(limits)]


def limit_settings(limit: Limit) -> str:
    """What a limits row sets, in words: ``at most 5 running, 2 running per owner, 60
    starts per 1m``; ``no limits`` when it sets nothing."""
    parts = []
    if limit.max_running is not None:
        parts.append(f"at most {limit.max_running} running")
    if limit.max_running_per_owner is not None:
        parts.append(f"{limit.max_running_per_owner} running per owner")
    if limit.rate is not None and limit.per_seconds is not None:
        per = format_duration(timedelta(seconds=limit.per_seconds))
        parts.append(f"{limit.rate} starts per {per}")
    if limit.weight is not None:
        parts.append(f"weight {limit.weight:g}")
    return ", ".join(parts) or "no limits"


def rate_text(limit: Limit) -> str:
    if limit.rate is None or limit.per_seconds is None:
        return "-"
    return f"{limit.rate} per {format_duration(timedelta(seconds=limit.per_seconds))}"


def _caps(limit: Limit) -> str:
    parts = []
    if limit.max_running is not None:
        parts.append(f"{limit.max_running} running")
    if limit.max_running_per_owner is not None:
        parts.append(f"{limit.max_running_per_owner} per owner")
    return ", ".join(parts) or "-"


def _pause_cell(limit: Limit) -> str:
    if not limit.paused:
        return "-"
    return pause_text(limit).removeprefix(f"{limit.scope} {limit.name} ")


def render_limits(limits: Sequence[Limit]) -> Table:
    """The limits rows, for `jobqueue limits show`: caps, rate, weight, pause, and the jobs
    of each queue or key running and pending now."""
    table = Table(header_style="bold")
    table.add_column("scope", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("caps", overflow="fold")
    table.add_column("rate", no_wrap=True)
    table.add_column("weight", justify="right")
    table.add_column("paused", overflow="fold")
    table.add_column("running", justify="right")
    table.add_column("pending", justify="right")
    for limit in limits:
        jobs = limit.scope != "owner"  # an owner's row counts no jobs: it holds a weight
        table.add_row(
            limit.scope,
            limit.name,
            _caps(limit),
            rate_text(limit),
            "-" if limit.weight is None else f"{limit.weight:g}",
            _pause_cell(limit),
            str(limit.running) if jobs else "-",
            str(limit.pending) if jobs else "-",
        )
    return table
