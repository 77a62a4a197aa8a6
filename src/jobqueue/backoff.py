"""Capped exponential backoff with jitter: the one rule every retry in jobqueue follows.

The n-th retry (``attempt`` 1, 2, ...) waits at most ``min(cap, base * 2**(attempt-1))``.
Jitter spreads out retries that failed together (a database restart, a provider outage) so
they do not come back as one burst. Two flavours:

- `full_jitter`, uniform in ``[0, ceiling]``: for failed jobs, where spreading matters more
  than any minimum wait (the queue's retry policy);
- `equal_jitter`, uniform in ``[ceiling/2, ceiling]``: for a process retrying its own work
  (a worker's database writes, the listener's reconnects, HTTP requests), where a retry must
  never come back to back with the failure.

`Backoff` counts consecutive failures for loops that retry until something works.
"""

from __future__ import annotations

import random


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before retry number ``attempt`` (1 for the first retry)."""
    return float(min(cap, base * 2.0 ** max(0, attempt - 1)))


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """A wait uniform in ``[0, ceiling]``."""
    return random.uniform(0.0, ceiling(attempt, base, cap))


def equal_jitter(attempt: int, base: float, cap: float) -> float:
    """A wait uniform in ``[ceiling/2, ceiling]``: never less than half the step."""
    step = ceiling(attempt, base, cap)
    return random.uniform(step / 2, step)


class Backoff:
    """Waits for a loop that retries until it succeeds: `next` after each failure (equal
    jitter, growing), `reset` after a success."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        """The wait after one more failure."""
        self.failures += 1
        return equal_jitter(self.failures, self.base, self.cap)

    def reset(self) -> None:
        """Start again from ``base``: the last attempt worked."""
        self.failures = 0


__all__ = ["Backoff", "ceiling", "equal_jitter", "full_jitter"]
