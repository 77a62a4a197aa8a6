"""Row-level security for Supabase: who may read and write the jobs table.

Supabase exposes every table in ``public`` to the browser (roles ``anon`` and
``authenticated``) through its REST API, so a jobs table without RLS is readable and
writable by anyone holding the anon key. `supabase_sql` returns the SQL to paste after the
migration; `jobqueue.migrations.apply_rls` runs the same statements, and
`jobqueue.migrations.supabase_script` (``jobqueue sql --supabase``) puts the migrations and
these statements in one transaction. The rules:

- ``authenticated`` users may INSERT jobs they own (``owner_id = auth.uid()``) and SELECT
  only their own jobs, and of those only the columns an owner needs (`OWNER_COLUMNS`:
  no worker host names, lease, provider task id or raw error text). An insert may name only
  the columns a browser has any business setting (`USER_COLUMNS`; a column-level grant, so
  naming ``remote_task_id``, ``status``, ``locked_by``, ``result`` ... is refused outright),
  and the policy pins the rest of the new row: its starting state, priority 0, at most the
  default number of attempts, a ``run_at`` from now to `MAX_DELAY` ahead, a payload within
  the library's default size and depth, and a queue and kind from the allowed lists
  (``image`` in ``default`` unless told otherwise). Otherwise a user could hand the worker
  someone else's provider task id to "resume", jump the queue with a large priority, or
  store a row the worker cannot read.
- Nobody but the worker's role (``service_role`` by default) may UPDATE or DELETE: claiming,
  completing, cancelling and pruning are the worker's (or an operator's) business. The
  worker role may read our version table, so ``jobqueue check`` can tell it the revision.
- ``anon`` gets nothing.

The SQL only *references* ``auth.uid()``; it never creates or replaces anything in Supabase's
own ``auth`` schema (a guard stops with a clear message when ``auth.uid()`` or one of the
roles is missing, before anything is changed). Every statement can be run again: policies
are dropped and recreated, grants are repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigurationError
from ..models import (
    DEFAULT_KIND,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_QUEUE,
    DEFAULT_TABLE,
    MAX_DELAY,
    MAX_JSON_DEPTH,
    MAX_JSON_INT_DIGITS,
)
from .table import (
    OWNER_COLUMNS,
    budgets_table_name,
    limits_table_name,
    schedules_table_name,
    validate_identifier,
    validate_table_name,
    version_table,
    workers_table_name,
)

DEFAULT_WORKER_ROLE = "service_role"
USER_ROLE = "authenticated"
ANONYMOUS_ROLE = "anon"

#: Policy names are scoped to their table, so they need not repeat the table's name.
OWNER_INSERT_POLICY = "jobqueue_owner_insert"
OWNER_SELECT_POLICY = "jobqueue_owner_select"
WORKER_POLICY = "jobqueue_worker_all"
WORKER_VERSION_POLICY = "jobqueue_worker_read"

#: ``auth.uid()`` returns a uuid; ``owner_id`` is text (owners need not be Supabase users).
#: The sub-select makes PostgreSQL evaluate it once per statement instead of once per row.
_CURRENT_USER = "(select auth.uid())::text"

#: What a row inserted by a user must look like: theirs, and not yet touched by a worker,
#: so nobody can insert a job that claims to be finished or held.
#: The column grant already keeps these columns at their defaults; the check restates it so
#: a wider grant added by hand later cannot quietly open them.
_NEW_JOB = (
    "status = 'pending' AND attempts = 0 AND locked_by IS NULL AND lease_expires_at IS NULL "
    "AND result IS NULL AND result_url IS NULL AND error IS NULL AND completed_at IS NULL "
    "AND remote_task_id IS NULL AND progress = 0 AND progress_message IS NULL "
    "AND started_at IS NULL"
)

#: What ``authenticated`` may name in an INSERT: what `JobQueue.enqueue` and a supabase-js
#: ``insert({kind, payload, owner_id})`` send. Every other column takes its default.
#: ``priority``, ``max_attempts`` and ``run_at`` are here only because the library's own
#: INSERT names them; the policy below pins what they may hold. ``start_by`` (a start
#: deadline) needs no bound: it only ever ends the user's own job sooner, unrun.
USER_COLUMNS = (
    "id",
    "queue",
    "kind",
    "payload",
    "priority",
    "max_attempts",
    "owner_id",
    "idempotency_key",
    "run_at",
    "start_by",
)

#: A browser's job waits its turn: no priority, no extra attempts, no back-dated run_at
#: (now() is the transaction's start, never later than the default clock_timestamp()), and
#: none further ahead than the library's own delays go (the upper bound reads the clock
#: after the row's default did, so a delay of exactly `MAX_DELAY` passes).
_FAIR_JOB = (
    f"priority = 0 AND max_attempts BETWEEN 1 AND {DEFAULT_MAX_ATTEMPTS} AND run_at >= now() "
    f"AND run_at <= clock_timestamp() + interval '{MAX_DELAY.days} days'"
)

#: A payload the worker can read, within the library's default limits: its size as stored
#: (checked first: it costs nothing) and as text (what the worker decodes: numbers that
#: jsonb keeps small may print with thousands of digits), its nesting depth, and no number
#: whose integer part has more digits than Python reads (jsonb prints ``1e5000`` as a
#: 5001-digit integer).
_READABLE_PAYLOAD = (
    f"pg_column_size(payload) <= {DEFAULT_MAX_PAYLOAD_BYTES} "
    f"AND octet_length(payload::text) <= {DEFAULT_MAX_PAYLOAD_BYTES} "
    f"AND NOT jsonb_path_exists(payload, 'strict $.**{{{MAX_JSON_DEPTH + 1} to last}}') "
    'AND NOT jsonb_path_exists(payload, \'strict $.** ? (@.type() == "number" && '
    f"(@ >= 1e{MAX_JSON_INT_DIGITS} || @ <= -1e{MAX_JSON_INT_DIGITS}))')"
)


def _prerequisites(worker_role: str) -> str:
    """A statement that stops the script, before it changes anything, when ``auth.uid()``
    or one of the roles is missing.

    It never creates them: on Supabase they exist and belong to Supabase; elsewhere their
    author must decide what they mean, and the worker role is the operator's to create.
    """
    missing_uid = (
        "IF to_regprocedure('auth.uid()') IS NULL THEN RAISE EXCEPTION "
        "'auth.uid() does not exist: this SQL is for Supabase (or a database that provides "
        "auth.uid() and the roles anon, authenticated and the worker role)'; END IF;"
    )
    missing_roles = " ".join(
        f"IF to_regrole('{_quote(role)}') IS NULL THEN RAISE EXCEPTION 'the role {role} does "
        f"not exist: {_how_to_get(role)}; nothing was changed'; END IF;"
        for role in (ANONYMOUS_ROLE, USER_ROLE, worker_role)
    )
    return f"DO $jobqueue$ BEGIN {missing_uid} {missing_roles} END $jobqueue$"


def _how_to_get(role: str) -> str:
    if role in (ANONYMOUS_ROLE, USER_ROLE, DEFAULT_WORKER_ROLE):
        return "Supabase provides it; on plain PostgreSQL create it first"
    return (
        f"create it first (CREATE ROLE {role} LOGIN PASSWORD ...), or name an existing role "
        "with --worker-role"
    )


def _quote(name: str) -> str:
    # Validated identifiers hold letters, digits and underscores only: quoting is enough.
    return f'"{name}"'


def _one_of(column: str, values: Sequence[str], what: str) -> str:
    """``column IN ('a', 'b')`` from a non-empty list of names the user may pick."""
    if isinstance(values, str) or not values:
        raise ConfigurationError(
            f"the {what}s a user may insert must be a non-empty list of names",
            hint=f"for example ({DEFAULT_KIND!r},) for kinds, ({DEFAULT_QUEUE!r},) for queues",
        )
    for value in values:
        validate_identifier(value, what)
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def rls_statements(
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    worker_role: str = DEFAULT_WORKER_ROLE,
    *,
    user_kinds: Sequence[str] = (DEFAULT_KIND,),
    user_queues: Sequence[str] = (DEFAULT_QUEUE,),
) -> list[str]:
    """The RLS set-up as separate statements, in the order they must run.

    ``user_kinds`` and ``user_queues`` are what a browser may insert: a kind or queue served
    by a privileged worker (or reserved for paying users) is then out of a user's reach.
    """
    validate_table_name(table)
    if schema is not None:
        validate_identifier(schema, "schema name")
    validate_identifier(worker_role, "worker role")
    if worker_role in (USER_ROLE, ANONYMOUS_ROLE):
        raise ConfigurationError(
            f"the worker role cannot be {worker_role!r}",
            hint="use a role the browser never gets, such as service_role",
        )
    prefix = f"{_quote(schema)}." if schema else ""
    jobs = prefix + _quote(table)
    versions = prefix + _quote(version_table(table))
    user, anon, worker = _quote(USER_ROLE), _quote(ANONYMOUS_ROLE), _quote(worker_role)
    owned = f"owner_id = {_CURRENT_USER}"
    allowed = f"{_one_of('kind', user_kinds, 'kind')} AND {_one_of('queue', user_queues, 'queue')}"
    out = [
        _prerequisites(worker_role),
        f"ALTER TABLE {jobs} ENABLE ROW LEVEL SECURITY",
        # REVOKE ALL on a table revokes its column grants too, so running this again never
        # leaves a column readable that the list below no longer names.
        f"REVOKE ALL ON {jobs} FROM PUBLIC, {anon}, {user}",
        f"GRANT SELECT ({', '.join(OWNER_COLUMNS)}) ON {jobs} TO {user}",
        f"GRANT INSERT ({', '.join(USER_COLUMNS)}) ON {jobs} TO {user}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {jobs} TO {worker}",
        f"DROP POLICY IF EXISTS {OWNER_INSERT_POLICY} ON {jobs}",
        f"CREATE POLICY {OWNER_INSERT_POLICY} ON {jobs} FOR INSERT TO {user} "
        f"WITH CHECK ({owned} AND {_NEW_JOB} AND {_FAIR_JOB} AND {allowed} "
        f"AND {_READABLE_PAYLOAD})",
        f"DROP POLICY IF EXISTS {OWNER_SELECT_POLICY} ON {jobs}",
        f"CREATE POLICY {OWNER_SELECT_POLICY} ON {jobs} FOR SELECT TO {user} USING ({owned})",
        # On Supabase service_role bypasses RLS anyway; the policy makes a worker role
        # without BYPASSRLS work too.
        f"DROP POLICY IF EXISTS {WORKER_POLICY} ON {jobs}",
        f"CREATE POLICY {WORKER_POLICY} ON {jobs} FOR ALL TO {worker} "
        "USING (true) WITH CHECK (true)",
        # Our migration bookkeeping is nobody's business but the owner's and the worker's
        # (`jobqueue check` run as the worker role reads the revision).
        f"ALTER TABLE {versions} ENABLE ROW LEVEL SECURITY",
        f"REVOKE ALL ON {versions} FROM PUBLIC, {anon}, {user}",
        f"GRANT SELECT ON {versions} TO {worker}",
        f"DROP POLICY IF EXISTS {WORKER_VERSION_POLICY} ON {versions}",
        f"CREATE POLICY {WORKER_VERSION_POLICY} ON {versions} FOR SELECT TO {worker} USING (true)",
    ]
    if schema is not None:
        out.insert(1, f"GRANT USAGE ON SCHEMA {_quote(schema)} TO {user}, {worker}")
    out += live_workers_statements(table, schema, worker_role)
    out += worker_only_statements(limits_table_name(table), schema, worker_role)
    # The budgets are the operator's: a user who could write them could raise their own.
    out += worker_only_statements(budgets_table_name(table), schema, worker_role)
    # The schedules are the operator's too: a user who could write one could have the
    # workers enqueue any job, as often as they like.
    out += worker_only_statements(schedules_table_name(table), schema, worker_role)
    return out


def live_workers_statements(
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    worker_role: str = DEFAULT_WORKER_ROLE,
) -> list[str]:
    """The live-workers table (``<table>_workers``): the worker role keeps its heartbeat row
    there (insert, refresh, delete, and delete stale rows of others); users and ``anon``
    may not see it, so host names and process ids stay out of the browser's reach."""
    validate_table_name(table)
    return worker_only_statements(workers_table_name(table), schema, worker_role)


def worker_only_statements(
    name: str, schema: str | None = None, worker_role: str = DEFAULT_WORKER_ROLE
) -> list[str]:
    """A table only the worker role may use (the live workers, the limits: which caps and
    pauses apply is the operator's business, not a browser's)."""
    validate_identifier(name, "table name")
    if schema is not None:
        validate_identifier(schema, "schema name")
    validate_identifier(worker_role, "worker role")
    prefix = f"{_quote(schema)}." if schema else ""
    workers = prefix + _quote(name)
    worker = _quote(worker_role)
    return [
        f"ALTER TABLE {workers} ENABLE ROW LEVEL SECURITY",
        f"REVOKE ALL ON {workers} FROM PUBLIC, {_quote(ANONYMOUS_ROLE)}, {_quote(USER_ROLE)}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {workers} TO {worker}",
        f"DROP POLICY IF EXISTS {WORKER_POLICY} ON {workers}",
        f"CREATE POLICY {WORKER_POLICY} ON {workers} FOR ALL TO {worker} "
        "USING (true) WITH CHECK (true)",
    ]


def supabase_sql(
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    worker_role: str = DEFAULT_WORKER_ROLE,
    *,
    user_kinds: Sequence[str] = (DEFAULT_KIND,),
    user_queues: Sequence[str] = (DEFAULT_QUEUE,),
) -> str:
    """The RLS set-up as one script for the Supabase SQL Editor (run it after the migration).

    Identifiers are validated before any SQL is built; running the script twice is safe.
    """
    statements = rls_statements(
        table, schema, worker_role, user_kinds=user_kinds, user_queues=user_queues
    )
    body = ";\n".join(statements)
    header = (
        f"-- jobqueue: row-level security for {schema + '.' if schema else ''}{table}\n"
        f"-- authenticated: insert and read own jobs; {worker_role}: everything; anon: nothing\n"
    )
    return f"{header}BEGIN;\n{body};\nCOMMIT;\n"
