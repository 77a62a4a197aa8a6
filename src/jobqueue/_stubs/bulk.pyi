"""The old import path of `jobqueue.drivers.copy`, `jobqueue.drivers.direct`,
`jobqueue.sql.steps`: its names are served from there (see `jobqueue._compat`)."""

from jobqueue.drivers.copy import (
    copy_rows as copy_rows,
    copy_rows_async as copy_rows_async,
)
from jobqueue.drivers.direct import (
    Processor as Processor,
    run_direct as run_direct,
    run_direct_async as run_direct_async,
)
from jobqueue.sql.steps import (
    CopyRows as CopyRows,
    Direct as Direct,
)

__all__ = [
    'CopyRows',
    'Direct',
    'Processor',
    'copy_rows',
    'copy_rows_async',
    'run_direct',
    'run_direct_async',
]
