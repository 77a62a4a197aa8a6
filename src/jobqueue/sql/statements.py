"""Every SQL statement jobqueue runs on the jobs table, built once with SQLAlchemy Core.

`Statements` is bound to one jobs table and one dialect. Its methods return steps
(`jobqueue.sql.steps`): a statement and the parameters to run it with, never touching a
connection, so the sync and the async queue run exactly the same SQL, and the statements
can be compiled and EXPLAINed in tests without running them. They are written by topic,
each topic a class of its own module, and `Statements` is all of them:

- `jobqueue.sql.enqueue`: new jobs (INSERT, COPY, idempotency keys);
- `jobqueue.sql.claim`: a worker's loop (claim, batch completion, both at once);
- `jobqueue.sql.held`: a worker's fenced writes to the jobs it holds;
- `jobqueue.sql.manage`: anyone's moves (cancel, retry, reap, prune) and the reads;
- `jobqueue.sql.position`: the bounded reads of a job's place in the line;
- `jobqueue.sql.admin`: the admin dashboard's reads and its retry of many jobs;
- `jobqueue.sql.gauges`: the grouped reads behind a metrics scrape.

What they share (the cache of built statements, the fence, batch parameters) is in
`jobqueue.sql.common`; the constructs whose SQL differs per database are in
`jobqueue.sql.dialect`, and where a statement differs by more than such a construct, its
builder branches on the dialect beside it. The statements on the live-workers table are
in `jobqueue.sql.presence`.

Fencing: every write a worker makes to a job it claimed carries ``(id, attempts,
started_at)`` and requires ``status = 'processing'``. A worker whose lease was lost (the
job was reaped, claimed again, released or cancelled) matches no row and so changes nothing.
"""

from __future__ import annotations

from .admin import AdminStatements
from .claim import Claiming
from .enqueue import Enqueueing
from .gauges import Gauging
from .held import HeldJobs
from .manage import Managing
from .position import Positioning


class Statements(
    Enqueueing, Claiming, HeldJobs, AdminStatements, Managing, Positioning, Gauging
):
    """The statements for one jobs table on one dialect (``postgresql`` or ``sqlite``)."""
