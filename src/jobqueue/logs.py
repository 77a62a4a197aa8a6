"""Logging set-up for programs that run jobqueue (the ``jobqueue`` command, a worker script).

jobqueue itself only logs, to loggers under ``jobqueue`` (``jobqueue.worker`` for the
worker's status lines, ``jobqueue.listener``, ...); where the lines go is the program's
choice. `log_to_file` sends them to a file for as long as a block runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: The format of jobqueue's log lines in a file.
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


@contextmanager
def log_to_file(
    path: str | os.PathLike[str], *, level: int = logging.INFO
) -> Iterator[logging.Handler]:
    """Also write the ``jobqueue`` log lines of ``level`` and above to the file at ``path``
    (appended, UTF-8, with a backslash escape for what UTF-8 cannot hold, `LOG_FORMAT`)
    while the block runs:

        with log_to_file("worker.log"):
            await worker.run()

    A handler is added to the ``jobqueue`` logger and removed and closed afterwards. If
    that logger would drop lines of ``level``, it is lowered to ``level`` meanwhile and
    put back afterwards."""
    # A line may quote a handler's exception or a job's text holding a lone surrogate:
    # written as an escape, not lost to an encoding error.
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    logger = logging.getLogger("jobqueue")
    before = logger.level
    lowered = logger.getEffectiveLevel() > level
    if lowered:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()
        if lowered and logger.level == level:
            logger.setLevel(before)


__all__ = ["LOG_FORMAT", "log_to_file"]
