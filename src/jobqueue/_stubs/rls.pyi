"""The old import path of `jobqueue.migrations.supabase`, `jobqueue.sql.rls`: its names are
served from there (see `jobqueue._compat`)."""

from jobqueue.migrations.supabase import (
    apply_rls as apply_rls,
    supabase_script as supabase_script,
)
from jobqueue.sql.rls import (
    ANONYMOUS_ROLE as ANONYMOUS_ROLE,
    DEFAULT_WORKER_ROLE as DEFAULT_WORKER_ROLE,
    OWNER_INSERT_POLICY as OWNER_INSERT_POLICY,
    OWNER_SELECT_POLICY as OWNER_SELECT_POLICY,
    USER_COLUMNS as USER_COLUMNS,
    USER_ROLE as USER_ROLE,
    WORKER_POLICY as WORKER_POLICY,
    WORKER_VERSION_POLICY as WORKER_VERSION_POLICY,
    live_workers_statements as live_workers_statements,
    rls_statements as rls_statements,
    supabase_sql as supabase_sql,
)

__all__ = [
    'ANONYMOUS_ROLE',
    'DEFAULT_WORKER_ROLE',
    'OWNER_INSERT_POLICY',
    'OWNER_SELECT_POLICY',
    'USER_COLUMNS',
    'USER_ROLE',
    'WORKER_POLICY',
    'WORKER_VERSION_POLICY',
    'apply_rls',
    'live_workers_statements',
    'rls_statements',
    'supabase_script',
    'supabase_sql',
]
