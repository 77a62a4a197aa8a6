"""CPU time of the machine, of processes and of the database server, read from Linux
``/proc`` (no extra dependency). Elsewhere every reading is ``None`` and the workloads say
so instead of guessing.

The server's share is the CPU time of the PostgreSQL processes that serve the benchmark's
database (its client backends and autovacuum workers), found in ``pg_stat_activity``; the
server's background processes (WAL writer, checkpointer, background writer) are counted
apart, since they work for every database on the server. Backends of other databases are
left out; they are part of the machine's "other" load. That only works when the server
runs on this machine (a local URL) and its processes' ``/proc`` entries are readable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Connection, text

from .peers.harness import TICK, machine_times


def load_average() -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process (its threads included), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def server_pids(conn: Connection) -> dict[int, bool]:
    """This database's backends (not the one asking; True) and the server's background
    processes (False), when they are processes of this machine."""
    rows = conn.execute(
        text(
            "SELECT pid, datname IS NOT NULL FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid()"
            " AND (datname = current_database() OR datname IS NULL)"
        )
    ).all()
    return {int(pid): bool(ours) for pid, ours in rows if _is_postgres(int(pid))}


def _is_postgres(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in ("postgres", "postmaster")
    except OSError:
        return False


@dataclass
class Snapshot:
    """CPU readings at one moment: the machine's, this database's backends' and the
    server's background processes', by pid."""

    machine: tuple[float, float] | None
    backends: dict[int, float]
    background: dict[int, float]

    @classmethod
    def take(cls, conn: Connection | None) -> Snapshot:
        backends: dict[int, float] = {}
        background: dict[int, float] = {}
        if conn is not None:
            for pid, ours in server_pids(conn).items():
                cpu = process_cpu(pid)
                if cpu is not None:
                    (backends if ours else background)[pid] = cpu
        return cls(machine_times(), backends, background)


@dataclass
class Used:
    """CPU seconds used between two snapshots: by this database's backends (the server's
    work for the benchmark), by the server's background processes (WAL writer,
    checkpointer, background writer: shared with every other database on the server), by
    the whole machine, and the seconds all its CPUs had. None where not readable."""

    server: float | None
    background: float | None
    machine_busy: float | None
    machine_total: float | None


def _delta(before: dict[int, float], after: dict[int, float]) -> float | None:
    if not after:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def used(before: Snapshot, after: Snapshot) -> Used:
    """CPU used from ``before`` to ``after``. A server process that started in between
    counts whole (it started after ``before``); one that ended in between is missed."""
    busy = total = None
    if before.machine and after.machine:
        busy = after.machine[0] - before.machine[0]
        total = after.machine[1] - before.machine[1]
    return Used(
        _delta(before.backends, after.backends),
        _delta(before.background, after.background),
        busy,
        total,
    )
