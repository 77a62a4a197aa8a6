"""The ``jobqueue`` command: set up the database, run workers, create and inspect jobs.

`main` is the console script (``jobqueue.cli:main``, reached through the light
`jobqueue._console`); `cli` is the click group. The code is split by topic:

- `.group`: the group and its global options (`Env`), the exit codes, and the one place
  where errors become an exit code and one line on stderr;
- `.jobs`: single jobs (enqueue, generate, status, list, cancel, retry, following a job);
- `.admin`: the database and the queue as a whole (migrate, sql, check, stats, workers,
  reap, prune);
- `.scheduling`: the limits every worker obeys and pauses (limits set/show/remove, pause,
  resume);
- `.budgets`: the owners' budgets (budget set/show/list/remove);
- `.schedules`: periodic jobs (schedule add/list/remove);
- `.run`: what runs until stopped (worker, serve, demo) and its logging;
- `.output`: how jobs look in a terminal (tables, progress bars, JSON, durations, limits
  and pauses);
- `.checks`: what ``check`` examines; `.demo`: what ``demo`` runs.

Each topic module adds its commands to `cli` when imported; importing this package
imports them all. Heavy imports (Alembic, httpx, the worker, the web app) stay inside the
commands that need them, so a command that only reads a job starts quickly.
"""

from __future__ import annotations

from . import admin, budgets, jobs, run, schedules, scheduling  # noqa: F401  (importing them adds their commands to `cli`)
from .group import cli, main

__all__ = ["cli", "main"]
