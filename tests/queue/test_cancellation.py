"""Cancelling an `AsyncJobQueue` call while its statement is in flight.

A worker cancels a handler (its job was cancelled, timed out, or the worker is stopping)
at whatever point it has reached, often in the middle of a write through the context
(``ctx.report_progress`` is `AsyncJobQueue.set_progress`). The cancelled call must not
leave its connection, the database or the queue's ``close`` waiting: every other call
finishes, the queue stays usable, ``close`` returns, and no connection is left out of the
pool for the garbage collector (SQLAlchemy's warning when one is collected).
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import warnings

from sqlalchemy.exc import SAWarning

from jobqueue import AsyncJobQueue

#: Generous bounds: a call or a close that has not finished by then never will (a statement
#: here takes milliseconds; SQLite's busy timeout is a minute).
CALLS_BOUND = 30.0
CLOSE_BOUND = 30.0
RUN_BOUND = 180.0
MAX_ROUNDS = 400


def test_cancelling_calls_in_flight_never_hangs_the_queue_or_its_close(
    migrated: tuple[str, str],
) -> None:
    # On an event loop of its own in a daemon thread: a hang fails this test instead of
    # leaving the loop's shutdown (which waits for every task) hanging the test run.
    url, table = migrated
    outcome: list[BaseException | None] = []  # the run's error, or None: it finished
    told = threading.Event()

    async def scenario() -> None:
        try:
            await _cancel_calls_in_flight(url, table)
        except BaseException as exc:  # handed to the test before the loop shuts down
            outcome.append(exc)
            raise
        else:
            outcome.append(None)
        finally:
            told.set()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", SAWarning)
        threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True).start()
        assert told.wait(RUN_BOUND), f"the calls and the close still waiting after {RUN_BOUND:g} s"
        gc.collect()
    if outcome[0] is not None:
        raise outcome[0]
    lost = [str(w.message) for w in seen if "non-checked-in connection" in str(w.message)]
    assert not lost, f"{len(lost)} connections left to the garbage collector: {lost[0]}"


async def _cancel_calls_in_flight(url: str, table: str) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    q = AsyncJobQueue(url, table=table)
    await q.enqueue("k", {})
    [job] = await q.claim("w")
    cancelled = finished = 0
    # Rounds go on until enough calls were cancelled in flight and enough finished (how
    # many of each a round gives depends on the machine's load), within a bound.
    for round_ in range(MAX_ROUNDS):
        if cancelled > 100 and finished > 100:
            break
        calls = [
            asyncio.create_task(q.set_progress(job, rng.randint(0, 99), f"r{round_}"))
            for _ in range(8)
        ]
        # Cancel about half of them, each after a random number of event-loop turns: in
        # the middle of checking a connection out, of a statement, of the commit or of the
        # connection's return.
        for call in calls:
            if rng.random() < 0.5:
                for _ in range(rng.randint(0, 40)):
                    await asyncio.sleep(0)
                call.cancel()
        _, pending = await asyncio.wait(calls, timeout=CALLS_BOUND)
        assert not pending, (
            f"seed {seed}, round {round_}: {len(pending)} calls still waiting "
            f"{CALLS_BOUND:g} s after {cancelled} cancellations"
        )
        for call in calls:
            if call.cancelled():
                cancelled += 1
            else:
                assert call.exception() is None, f"seed {seed}"
                finished += 1
    # The test would pass vacuously without cancellations that hit calls in flight.
    assert cancelled > 100 and finished > 100, (seed, cancelled, finished)

    # The queue is still usable: a write and a read on its connections.
    await asyncio.wait_for(q.set_progress(job, 100, "after"), CALLS_BOUND)
    after = await asyncio.wait_for(q.get(job.id), CALLS_BOUND)
    assert (after.progress, after.progress_message) == (100, "after")
    try:
        await asyncio.wait_for(q.close(), CLOSE_BOUND)
    except TimeoutError:
        raise AssertionError(f"seed {seed}: close still waiting after {CLOSE_BOUND:g} s") from None
