"""The old import path of `jobqueue.sql.presence`, `jobqueue.sql.table`: its names are served from there (see `jobqueue._compat`)."""

from jobqueue.sql.presence import (
    NEEDS as NEEDS,
    PresenceStatements as PresenceStatements,
)
from jobqueue.sql.table import (
    WORKERS_SUFFIX as WORKERS_SUFFIX,
    workers_table as workers_table,
    workers_table_name as workers_table_name,
)

__all__ = [
    'NEEDS',
    'PresenceStatements',
    'WORKERS_SUFFIX',
    'workers_table',
    'workers_table_name',
]
