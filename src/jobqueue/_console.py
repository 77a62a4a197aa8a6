"""The ``jobqueue`` console script and ``python -m jobqueue``: `jobqueue.cli.main`, with
Ctrl-C handled from the very first instant.

Ctrl-C stops a command; it never prints a traceback. The first one interrupts the command
(``KeyboardInterrupt``, or the cancellation of an asyncio command, see `run_async`) so that
it closes what it opened; any later one ends the process at once. Commands that give Ctrl-C
a meaning of their own (the worker's graceful stop, uvicorn's) install their handlers for
as long as they serve. This module imports nothing heavy, so Ctrl-C while the command is
still loading (click, rich and SQLAlchemy take a moment on a slow machine) ends it as
quietly as at any later point.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

#: The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

_said = False


def _say_aborted() -> None:
    global _said
    if not _said:
        _said = True
        # os.write: safe from a signal handler too (no buffered stream); stderr may be a
        # pipe that went away.
        with contextlib.suppress(OSError):
            os.write(2, b"Aborted.\n")


def _exit_now(signum: int, frame: FrameType | None) -> None:
    """A Ctrl-C after the first: the command is already stopping; stop the process now."""
    _say_aborted()
    os._exit(EXIT_INTERRUPTED)


def _first_interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, _exit_now)
    raise KeyboardInterrupt


def interrupted() -> NoReturn:
    """End the command after Ctrl-C: ``Aborted.`` and exit code 130. Python still shuts
    down (joins threads, closes files); a Ctrl-C meanwhile ends the process at once."""
    signal.signal(signal.SIGINT, _exit_now)
    _say_aborted()
    sys.exit(EXIT_INTERRUPTED)


def closing() -> None:
    """Say that the command only closes what it opened from here on (its work is done,
    or stopped by its own signal handling): a Ctrl-C now ends the process at once rather
    than cancel the closing half-way (which drivers report with a traceback)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_now)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` for a command: the first Ctrl-C cancels ``main`` (its ``finally``
    blocks close connections and hand jobs back) and ends the command with `interrupted`;
    a later one ends the process at once."""
    import asyncio

    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(main)  # signal handlers belong to the main thread
    loop_and_task: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []
    cancelled = False

    async def command() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop_and_task.append((asyncio.get_running_loop(), task))
        return await main

    def cancel(signum: int, frame: FrameType | None) -> None:
        nonlocal cancelled
        if cancelled or not loop_and_task:
            _exit_now(signum, frame)
        cancelled = True
        loop, task = loop_and_task[0]
        loop.call_soon_threadsafe(task.cancel)

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        return asyncio.run(command())
    except asyncio.CancelledError:
        if cancelled:
            interrupted()
        raise
    finally:
        if signal.getsignal(signal.SIGINT) is cancel:
            signal.signal(signal.SIGINT, previous)


def main() -> NoReturn:
    signal.signal(signal.SIGINT, _first_interrupt)
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:
        interrupted()
