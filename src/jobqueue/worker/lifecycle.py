"""A worker's lifecycle: one `State`, the moves between states written once (`MOVES`), and
what asks for them — `Worker.run` / `run_until_idle` starting, `Worker.stop` (from any
thread, even before serving), SIGTERM/SIGINT, a cancellation from outside.

A run goes ``STARTING -> SERVING`` (``FULL`` while every slot is taken) and ends through
one of three ways of writing its last outcomes: ``FINISHING`` (`run_until_idle` found
nothing left to do), ``CLOSING`` (after a graceful stop: running jobs had the grace period,
failing writes are retried until the write deadline) or ``CLOSING_NOW`` (after an immediate
stop or a cancellation: failing writes are given up at once), and then back to ``IDLE``. A
stop asked while the worker is not serving is kept (``STOP_ASKED``, ``STOP_NOW_ASKED``) and
ends the next run as soon as it starts. A stop only ever hardens: graceful to immediate,
never back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("jobqueue.worker")


class State(enum.Enum):
    """Where a worker is in its life; see the module's docstring."""

    # Members are singletons: hashing by identity keeps the checks on a job's path (set
    # and table lookups) in C, instead of Enum's hash of the member's name.
    __hash__ = object.__hash__

    #: Not serving.
    IDLE = "idle"
    #: Not serving; a graceful stop was asked, so the next run stops as soon as it starts.
    STOP_ASKED = "stop asked"
    #: Not serving; an immediate stop was asked, for the next run.
    STOP_NOW_ASKED = "stop now asked"
    #: A run began: the worker checks its access and writes its live-workers row.
    STARTING = "starting"
    #: Claiming jobs into free slots and running them.
    SERVING = "serving"
    #: Serving with every slot taken: the claim loop waits for one, and finished batches
    #: claim their replacements in the statement that completes them.
    FULL = "full"
    #: A graceful stop: no new claims; running jobs get the grace period.
    STOPPING = "stopping"
    #: An immediate stop (or a cancellation): running jobs are cancelled and released.
    STOPPING_NOW = "stopping now"
    #: `run_until_idle` found nothing due and nothing running: the last outcomes are written.
    FINISHING = "finishing"
    #: Every handler ended after a graceful stop: the last outcomes are written, failing
    #: writes retried until the write deadline.
    CLOSING = "closing"
    #: As ``CLOSING`` after an immediate stop: failing writes are given up at once.
    CLOSING_NOW = "closing now"


S = State

#: Every allowed move; `Lifecycle` refuses any other. A run that ends before its closing
#: (start-up failed, or the run was interrupted) goes back to ``IDLE`` from where it was.
MOVES: Mapping[State, frozenset[State]] = {
    S.IDLE: frozenset({S.STOP_ASKED, S.STOP_NOW_ASKED, S.STARTING}),
    S.STOP_ASKED: frozenset({S.STOP_NOW_ASKED, S.STOPPING}),
    S.STOP_NOW_ASKED: frozenset({S.STOPPING_NOW}),
    S.STARTING: frozenset({S.SERVING, S.STOPPING, S.STOPPING_NOW, S.IDLE}),
    S.SERVING: frozenset({S.FULL, S.STOPPING, S.STOPPING_NOW, S.FINISHING, S.IDLE}),
    S.FULL: frozenset({S.SERVING, S.STOPPING, S.STOPPING_NOW, S.IDLE}),
    S.STOPPING: frozenset({S.STOPPING_NOW, S.CLOSING, S.IDLE}),
    S.STOPPING_NOW: frozenset({S.CLOSING_NOW, S.IDLE}),
    S.FINISHING: frozenset({S.CLOSING, S.CLOSING_NOW, S.IDLE}),
    S.CLOSING: frozenset({S.CLOSING_NOW, S.IDLE}),
    S.CLOSING_NOW: frozenset({S.IDLE}),
}

#: States in which no run is in progress.
NOT_RUNNING = frozenset({S.IDLE, S.STOP_ASKED, S.STOP_NOW_ASKED})
#: States in which a stop was asked during the run (`FINISHING` is an end without one).
STOP_ASKED = frozenset({S.STOPPING, S.STOPPING_NOW, S.CLOSING, S.CLOSING_NOW})
#: States after an immediate stop.
IMMEDIATE = frozenset({S.STOPPING_NOW, S.CLOSING_NOW})
#: States in which the claim loop claims.
CLAIMING = frozenset({S.SERVING, S.FULL})
#: States in which the run's last outcomes are being written.
CLOSING = frozenset({S.FINISHING, S.CLOSING, S.CLOSING_NOW})

# Looked up on every job's path: a module constant is cheaper than an Enum attribute.
_FULL = S.FULL
_SERVING = S.SERVING

#: Where a stop request leads from each state: (graceful, immediate). No entry: it changes
#: nothing (the stop asked already is at least as hard).
_ON_STOP: Mapping[State, tuple[State, State]] = {
    S.IDLE: (S.STOP_ASKED, S.STOP_NOW_ASKED),
    S.STOP_ASKED: (S.STOP_ASKED, S.STOP_NOW_ASKED),
    S.STARTING: (S.STOPPING, S.STOPPING_NOW),
    S.SERVING: (S.STOPPING, S.STOPPING_NOW),
    S.FULL: (S.STOPPING, S.STOPPING_NOW),
    S.STOPPING: (S.STOPPING, S.STOPPING_NOW),
    S.FINISHING: (S.CLOSING, S.CLOSING_NOW),
    S.CLOSING: (S.CLOSING, S.CLOSING_NOW),
}

#: Where a run starts from each state it may start from.
_ON_BEGIN: Mapping[State, State] = {
    S.IDLE: S.STARTING,
    S.STOP_ASKED: S.STOPPING,
    S.STOP_NOW_ASKED: S.STOPPING_NOW,
}

#: Where the closing leads once every handler has ended (already closing: stays).
_ON_CLOSE: Mapping[State, State] = {
    S.SERVING: S.FINISHING,
    S.STOPPING: S.CLOSING,
    S.STOPPING_NOW: S.CLOSING_NOW,
}


class WorkerStateError(RuntimeError):
    """A move `MOVES` does not allow: a bug in the worker, never a user's mistake."""


class Lifecycle:
    """The one state of a worker, the moves that change it, and the signals of a run.

    ``wake`` wakes the claim loop (a NOTIFY, a freed slot, a stop); ``stopped`` is set once
    a stop is asked during a run (it ends waits at start and retry pauses). Both are fresh
    for each run. ``write_deadline`` (monotonic seconds, set when the run begins to stop)
    bounds how long failing writes are retried.
    """

    def __init__(self, worker_id: str, grace_period: float) -> None:
        self.worker_id = worker_id
        self.grace_period = grace_period
        self.state = State.IDLE
        #: Whether the current run is `run_until_idle` (fixed for the run).
        self.until_idle = False
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.write_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals_wanted = False
        self._signals_installed: list[signal.Signals] = []
        self._signals_before: dict[signal.Signals, Any] = {}

    # -- the state --------------------------------------------------------------------------

    def move(self, to: State) -> None:
        """Go to ``to``; `WorkerStateError` if `MOVES` does not allow it from here."""
        if to not in MOVES[self.state]:
            raise WorkerStateError(f"a worker cannot go from {self.state.value} to {to.value}")
        self.state = to

    @property
    def running(self) -> bool:
        """Whether a run is in progress (from its start to its last outcome written)."""
        return self.state not in NOT_RUNNING

    @property
    def claiming(self) -> bool:
        return self.state in CLAIMING

    @property
    def full(self) -> bool:
        return self.state is _FULL

    @property
    def stop_asked(self) -> bool:
        return self.state in STOP_ASKED

    @property
    def immediate(self) -> bool:
        return self.state in IMMEDIATE

    @property
    def closing(self) -> bool:
        return self.state in CLOSING

    @property
    def waits_for_slots(self) -> bool:
        """Whether a job or a batch ending should wake the claim loop or the drain: it
        waits for a slot, for the run to be idle, or for running jobs to end."""
        state = self.state
        return state is _FULL or self.until_idle or state in STOP_ASKED

    def gives_up_writes(self) -> bool:
        """Whether a failing write should stop retrying: at once after an immediate stop,
        after the write deadline otherwise (never while serving)."""
        if self.state in IMMEDIATE:
            return True
        return self.write_deadline is not None and time.monotonic() > self.write_deadline

    # -- a run ------------------------------------------------------------------------------

    def begin(self, *, until_idle: bool) -> None:
        """Start a run on the running loop: ``STARTING``, or straight to stopping when a
        stop was asked before. `RuntimeError` while a run is in progress."""
        if self.running:
            raise RuntimeError("this worker is already running")
        self._loop = asyncio.get_running_loop()
        self.until_idle = until_idle
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.write_deadline = None
        asked = self.state
        self.move(_ON_BEGIN[asked])
        if asked is not State.IDLE:
            self._stop_began(immediate=asked is State.STOP_NOW_ASKED)

    def serve_signals(self) -> None:
        """Install the signal handlers `install_signal_handlers` asked for before the run."""
        if self._signals_wanted and self._loop is not None:
            self._install_signals(self._loop)

    def started(self) -> None:
        """The worker announced itself: serve, unless a stop came meanwhile."""
        if self.state is State.STARTING:
            self.move(State.SERVING)

    def slots_taken(self) -> None:
        """Every slot is taken: the claim loop waits for one (``FULL``)."""
        self.move(_FULL)

    def slot_wait_over(self) -> None:
        """The claim loop woke up: back to ``SERVING`` unless a stop came meanwhile."""
        if self.state is _FULL:
            self.move(_SERVING)

    def draining(self, lease: float) -> None:
        """The run begins to stop: failing writes are retried for the grace period and a
        lease more at most."""
        self.write_deadline = time.monotonic() + self.grace_period + lease

    def close(self) -> None:
        """Every handler has ended: the last outcomes are written (idempotent)."""
        if self.state not in CLOSING:
            self.move(_ON_CLOSE[self.state])

    def interrupted(self) -> None:
        """The run was cancelled from outside: hand back what is held as an immediate stop
        would, quietly (whoever cancelled knows)."""
        self._to_stop(immediate=True, quiet=True)

    def end(self) -> None:
        """The run is over, however it ended; its signal handlers are removed."""
        if self._loop is not None:
            self._remove_signals(self._loop)
        self.move(State.IDLE)
        self.until_idle = False

    # -- stopping ---------------------------------------------------------------------------

    def request_stop(self, *, immediate: bool = False) -> None:
        """Ask for a stop, from any thread or a signal handler; kept for the next run when
        no run is in progress (or its loop is gone)."""
        loop = self._loop
        if not self.running or loop is None or loop.is_closed():
            if not self.running:
                self._to_stop(immediate=immediate, quiet=True)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._to_stop(immediate=immediate)
        else:
            loop.call_soon_threadsafe(self._stop_from_loop, immediate)

    def _stop_from_loop(self, immediate: bool) -> None:
        # The run may have ended between the request and this call.
        if self.running:
            self._to_stop(immediate=immediate)

    def _to_stop(self, *, immediate: bool, quiet: bool = False) -> None:
        targets = _ON_STOP.get(self.state)
        if targets is not None:
            to = targets[1] if immediate else targets[0]
            if to is not self.state:
                was_asked = self.stop_asked
                self.move(to)
                if self.running and not quiet:
                    self._log_stop(immediate, was_asked)
        if self.running:
            self.wake.set()
            self.stopped.set()

    def _stop_began(self, *, immediate: bool) -> None:
        self._log_stop(immediate, was_asked=False)
        self.wake.set()
        self.stopped.set()

    def _log_stop(self, immediate: bool, was_asked: bool) -> None:
        if immediate:
            log.warning("Worker %s stopping now: running jobs are released", self.worker_id)
        elif not was_asked:
            log.info(
                "Worker %s stopping: no new jobs; running jobs get %gs to finish",
                self.worker_id,
                self.grace_period,
            )

    # -- signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: the first stops gracefully, a second stops at once. Installed
        now when called inside a run, else when the next run begins; removed (the handlers
        from before put back) when the run ends."""
        self._signals_wanted = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.running:
            self._install_signals(loop)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop_asked:
            log.warning("%s again: stopping at once", name)
            self.request_stop(immediate=True)
        else:
            log.info("%s: stopping gracefully; send it again to stop at once", name)
            self.request_stop(immediate=False)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("signal handlers can only be installed in the main thread")
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig in self._signals_installed:
                continue
            self._signals_before[sig] = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._on_signal, int(sig))
            except NotImplementedError:  # Windows event loops
                signal.signal(sig, lambda n, _f: loop.call_soon_threadsafe(self._on_signal, n))
            self._signals_installed.append(sig)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self._signals_installed:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
            # The handler from before serving (the host's, or the CLI's for a Ctrl-C
            # during cleanup), not Python's default: asyncio would put that one back.
            before = self._signals_before.pop(sig, None)
            signal.signal(sig, signal.SIG_DFL if before is None else before)
        self._signals_installed = []


__all__ = ["MOVES", "Lifecycle", "State", "WorkerStateError"]
