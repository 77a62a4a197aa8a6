"""The old import path of `jobqueue.sql.dialect`: its names are served from there (see
`jobqueue._compat`)."""

from jobqueue.sql.dialect import (
    DbNow as DbNow,
    DbNowAfter as DbNowAfter,
    DbNowPlus as DbNowPlus,
    DbNowText as DbNowText,
    Finite as Finite,
    JsonAppend as JsonAppend,
    NewJobId as NewJobId,
    SQLITE_NOW as SQLITE_NOW,
    SQLiteJSON as SQLiteJSON,
    UTCDateTime as UTCDateTime,
    json_type as json_type,
    sqlite_time as sqlite_time,
)

__all__ = [
    'DbNow',
    'DbNowAfter',
    'DbNowPlus',
    'DbNowText',
    'Finite',
    'JsonAppend',
    'NewJobId',
    'SQLITE_NOW',
    'SQLiteJSON',
    'UTCDateTime',
    'json_type',
    'sqlite_time',
]
