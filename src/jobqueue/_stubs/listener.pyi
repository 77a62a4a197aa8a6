"""The old import path of `jobqueue.drivers.listen`: its names are served from there (see
`jobqueue._compat`)."""

from jobqueue.drivers.listen import (
    DEFAULT_HEALTH_INTERVAL as DEFAULT_HEALTH_INTERVAL,
    Listener as Listener,
    libpq_url as libpq_url,
    log as log,
)

__all__ = [
    'DEFAULT_HEALTH_INTERVAL',
    'Listener',
    'libpq_url',
    'log',
]
