"""The exceptions jobqueue raises.

Every error carries a ``hint``: one sentence that tells the reader what to do next. The CLI
prints ``message`` and ``hint`` on one line each and exits; library users can show the hint
to an operator. Driver exceptions never leak through the public API untranslated, because a
bare "relation does not exist" tells a newcomer nothing about ``jobqueue migrate``
(`jobqueue.drivers.errors` translates them).

Every layer may import this module: it also holds the two text helpers every layer needs
for what it logs or stores, `redact` (passwords out of URLs) and `describe_error` (an
exception as one safe line), so that the worker and the generators need not import the
driver layer for them, and `warn_renamed`, the warning every old name of a renamed public
name gives.
"""

from __future__ import annotations

import re
import warnings
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Job


class JobQueueError(Exception):
    """Base class of every error raised by jobqueue."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigurationError(JobQueueError):
    """The library or a worker was set up with settings that cannot work."""

    hint = "check the settings and environment variables named in the message"


class SchemaNotInstalled(JobQueueError):
    """The jobs table (or the version it needs) is missing from the database."""

    hint = "run `jobqueue migrate` (or jobqueue.migrate(url)) against this database"


class DatabaseUnavailable(JobQueueError):
    """The database could not be reached."""

    hint = "check JOBQUEUE_DATABASE_URL and that the database server is running"


class DatabaseTimeout(DatabaseUnavailable, TimeoutError):
    """The database gave no answer within the queue's ``command_timeout``: the network to it
    is silent (a partition, a stuck proxy or load balancer) or it is stalled. The connection
    was dropped. The operation may or may not have taken effect on the server."""

    hint = (
        "check the network path to the database; retry later (an enqueue with an "
        "idempotency_key can be sent again safely), or raise command_timeout for long batches"
    )


class DatabaseBusy(DatabaseUnavailable):
    """A lock the statement needed stayed taken for longer than the queue's ``lock_timeout``
    (another session, such as a migration or a DBA's ``LOCK TABLE``, holds it); on SQLite,
    another writer held the write lock for as long. Nothing was written. A
    `DatabaseUnavailable`, so whatever retries an outage retries this too (a worker backs
    off and claims again; the web API answers 503)."""

    hint = (
        "another session holds a lock on the jobs table (a migration, a LOCK TABLE, a long "
        "transaction): try again shortly; pg_locks shows who holds it"
    )


class DatabaseReadOnly(DatabaseUnavailable):
    """The database refuses writes: it is read-only (``default_transaction_read_only``, a
    standby, a read-only file) or out of disk space. Nothing was written; reads still work.
    A `DatabaseUnavailable`: workers back off and write their outcomes once writes come
    back."""

    hint = (
        "make the database writable again (free disk space, turn off "
        "default_transaction_read_only, point at the primary); jobs resume by themselves"
    )


class PermissionDenied(JobQueueError):
    """The database role may not do what was asked (often an RLS policy)."""

    hint = (
        "connect the worker as a role allowed to update jobs, or check the RLS policies "
        "(`jobqueue sql --supabase` prints them)"
    )


class JobNotFound(JobQueueError):
    """No job has the given id (or the caller may not see it)."""

    hint = "check the job id; `jobqueue list` shows recent jobs"


class InvalidJobId(JobNotFound):
    """The given id is not a UUID, so no job can have it."""

    hint = "job ids are UUIDs such as 0190c1d2-7b3a-7c1e-9a4b-2f1e3d4c5b6a"


class InvalidTransition(JobQueueError):
    """The job is in a status from which the requested move is not allowed."""

    hint = "see docs/concepts.md for the allowed moves between statuses"


class LeaseLost(JobQueueError):
    """A worker tried to write to a job it no longer holds.

    Its lease expired and the job was reaped or claimed again, or the job was cancelled.
    Nothing was written; the job's current holder (if any) owns the outcome.
    """

    hint = "the job's lease expired before this write; raise the lease or heartbeat more often"


class PayloadError(JobQueueError, ValueError):
    """A value given to the API cannot be stored (not JSON, too large, out of range)."""

    hint = "pass JSON-serialisable data within the documented limits"


class GenerationError(JobQueueError):
    """A generator (mock or provider) reported that a generation failed."""

    hint = "see the provider's message; the job's `errors` history keeps every attempt"

    retryable: bool = True
    """False when running the job again cannot help or could cost twice (a rejected key, a
    bad request, a submit the provider may already have accepted)."""

    cost: Decimal | None = None
    """What the provider charged for the failed generation anyway (DefAPI's ``consumed``
    of a failed task), in ``cost_unit``: the worker adds it to the job's cost."""

    cost_unit: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retryable: bool | None = None,
        cost: Decimal | None = None,
        cost_unit: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        if retryable is not None:
            self.retryable = retryable
        if cost is not None:
            self.cost, self.cost_unit = cost, cost_unit


class RetryLater(JobQueueError):
    """ "Not now": raised by a handler or a generator whose provider refused the work for a
    while (a 429 with ``Retry-After``, a quota window, a maintenance slot).

    The worker gives the job back to ``pending`` without spending an attempt, to start again
    in ``after`` seconds (a number or a timedelta; at most `jobqueue.models.MAX_DELAY`),
    and pauses the job's limit key (its ``limit_key``, else its kind) for as long for every
    worker, so one refusal slows the whole fleet instead of every job meeting the same wall
    (`JobQueue.retry_later`). ``after`` must be a finite number of seconds, zero or more:
    anything else fails the attempt like any other error, retried by the job's policy.
    Outside a worker (a generator called directly) it is an ordinary exception: wait
    ``after`` seconds and call again.
    """

    hint = "the job waits without spending an attempt; list_limits() shows its key's pause"

    def __init__(
        self, after: float | timedelta, reason: str = "the provider asked to retry later"
    ) -> None:
        seconds = after.total_seconds() if isinstance(after, timedelta) else after
        #: The wait in seconds, as given (the worker checks it: see the class docstring).
        self.after: float = seconds
        self.reason = reason
        try:
            shown = f"{float(seconds):g} s"
        except (TypeError, ValueError, OverflowError):
            shown = repr(seconds)
        super().__init__(f"{reason} (retry in {shown})")


class JobFailed(JobQueueError):
    """A job that a caller waited for ended in ``failed`` or ``cancelled``."""

    hint = "inspect the job with `jobqueue status ID`; `jobqueue retry ID` runs it again"

    def __init__(self, message: str, *, job_id: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id

    @classmethod
    def of(cls, job: Job) -> JobFailed:
        """The error for ``job``, which ended ``failed``, ``cancelled`` or ``expired``
        (`JobExpired`): the one wording that `wait_result` and the CLI both use."""
        if job.status == "expired" and cls is JobFailed:
            return JobExpired.of(job)
        return cls(
            f"job {job.id} ended {job.status.value}: {job.error or 'no error recorded'}",
            job_id=job.id,
        )


class JobExpired(JobFailed):
    """A job that a caller waited for was not started by its start deadline (``start_by``)
    and became ``expired``: it never ran, and never reached the provider. A `JobFailed`,
    so code that handles a job that did not complete handles this one too."""

    hint = (
        "nothing ran and nothing was spent; enqueue again with a later deadline, or "
        "`jobqueue retry ID` to run it without one"
    )

    @classmethod
    def of(cls, job: Job) -> JobExpired:
        deadline = "" if job.start_by is None else f" (its deadline was {job.start_by.isoformat()})"
        return cls(f"job {job.id} expired: it was not started in time{deadline}", job_id=job.id)


class BudgetExceeded(JobQueueError):
    """An enqueue refused because reserving its jobs' estimated cost would take their
    owner past the budget (`JobQueue.set_budget`): nothing was enqueued. ``owner_id``,
    ``amount`` and ``period`` are the budget's, ``spent`` what already counts against it
    (costs plus what pending and running jobs reserved), ``requested`` the batch's estimate."""

    hint = (
        "raise the budget with `jobqueue budget set OWNER AMOUNT` or wait for the period to "
        "roll over; a prepaid balance never rolls over, top it up"
    )

    def __init__(
        self,
        message: str,
        *,
        owner_id: str = "",
        amount: Decimal | None = None,
        period: str = "",
        spent: Decimal | None = None,
        requested: Decimal | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.owner_id = owner_id
        self.amount = amount
        self.period = period
        self.spent = spent
        self.requested = requested


class WaitTimeout(JobQueueError, TimeoutError):
    """A wait for a job ran out of time; the job itself keeps running."""

    hint = "the job is still queued or running; wait on its id again later"

    def __init__(self, message: str, *, job_id: object = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id


# -- text helpers for logs and stored errors -----------------------------------------------

# The password runs to the *last* "@" before the host part: an unencoded "@" in a password
# must not leave its tail visible. A password may also come as a query or conninfo parameter.
# The lookbehind starts a match only where a scheme can start, so a long run of letters
# (a megabyte-long exception message) is scanned once, not once per position (quadratic).
_PASSWORD_IN_URL = re.compile(
    r"(?P<pre>(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^\s?#]*@"
)
_PASSWORD_PARAMETER = re.compile(r"(?i)(?P<pre>\bpassword\s*=\s*)(?:'[^']*'|[^&\s]*)")


def redact(text: str) -> str:
    """Hide passwords in any URL inside ``text`` (for logs and error messages)."""
    return _PASSWORD_PARAMETER.sub(r"\g<pre>***", _PASSWORD_IN_URL.sub(r"\g<pre>***@", text))


#: The longest `describe_error` answer: enough for any useful first line, short enough for logs.
ERROR_TEXT_LIMIT = 1000


def describe_error(exc: BaseException, *, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``Type: first line of the message`` for logs and a job's stored error.

    Only the first line, because driver errors append the SQL and its ``[parameters: ...]``
    (user data, possibly hundreds of rows) on later lines; passwords hidden (`redact`);
    at most ``limit`` characters. Never raises, even when ``str(exc)`` does.
    """
    try:
        lines = str(exc).strip().splitlines()
    except Exception:
        lines = ["(its message could not be read)"]
    first = lines[0].strip() if lines else ""
    text = redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "\u2026"


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn (`DeprecationWarning`) that ``old`` is the old name of ``new``, which does the
    same; ``stacklevel`` 3 points at the caller of the function that calls this one."""
    warnings.warn(
        f"{old} is deprecated: use {new}, which does the same", DeprecationWarning, stacklevel
    )
