"""Alembic environment for jobqueue's own migrations.

Used both by `jobqueue.migrate` (which passes a connection and the table name in
``config.attributes``) and by the repository's ``alembic`` command (``-x table=…``,
``-x schema=…``, ``-x url=…`` or ``JOBQUEUE_DATABASE_URL``). The version table is our own,
named after the jobs table, so a host application's Alembic history is never touched.
"""

from __future__ import annotations

from alembic import context
from jobqueue.migrations import run_env

run_env(context)
