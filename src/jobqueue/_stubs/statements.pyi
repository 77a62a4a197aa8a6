"""The old import path of `jobqueue.sql.common`, `jobqueue.sql.statements`,
`jobqueue.sql.steps`: its names are served from there (see `jobqueue._compat`)."""

from jobqueue.sql.common import (
    MAX_SHAPES as MAX_SHAPES,
)
from jobqueue.sql.statements import (
    Statements as Statements,
)
from jobqueue.sql.steps import (
    Query as Bound,
    Params as Params,
)

__all__ = [
    'Bound',
    'MAX_SHAPES',
    'Params',
    'Statements',
]
