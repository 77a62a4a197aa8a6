"""The old import path of `jobqueue.drivers.engines`, `jobqueue.drivers.errors`,
`jobqueue.errors`, `jobqueue.models`: its names are served from there (see
`jobqueue._compat`)."""

from jobqueue.drivers.engines import (
    DEFAULT_URL as DEFAULT_URL,
    PRE_PING as PRE_PING,
    READ_ONLY as READ_ONLY,
    SQLITE_BUSY_TIMEOUT_MS as SQLITE_BUSY_TIMEOUT_MS,
    URL_ENV as URL_ENV,
    database_url as database_url,
    describe_database as describe_database,
    describe_url as describe_url,
    make_async_engine as make_async_engine,
    make_engine as make_engine,
    normalise_url as normalise_url,
    sqlite_path as sqlite_path,
)
from jobqueue.drivers.errors import (
    translate as translate,
    translated_errors as translated_errors,
)
from jobqueue.errors import (
    ERROR_TEXT_LIMIT as ERROR_TEXT_LIMIT,
    describe_error as describe_error,
    redact as redact,
)
from jobqueue.models import (
    END_OF_TIME as END_OF_TIME,
    START_OF_TIME as START_OF_TIME,
)

__all__ = [
    'DEFAULT_URL',
    'END_OF_TIME',
    'ERROR_TEXT_LIMIT',
    'PRE_PING',
    'READ_ONLY',
    'SQLITE_BUSY_TIMEOUT_MS',
    'START_OF_TIME',
    'URL_ENV',
    'database_url',
    'describe_database',
    'describe_error',
    'describe_url',
    'make_async_engine',
    'make_engine',
    'normalise_url',
    'redact',
    'sqlite_path',
    'translate',
    'translated_errors',
]
