"""CPU time of the machine, of processes and of the database server, read from Linux
``/proc`` (no extra dependency). Elsewhere every reading is ``None`` and the workloads say
so instead of guessing.

The server's share is the CPU time of the PostgreSQL processes that serve the benchmark's
database: its client backends (and autovacuum workers) and the server's background
processes (WAL writer, checkpointer, background writer), found in ``pg_stat_activity``.
Backends of other databases on the same server are left out; they are part of the
machine's "other" load. That only works when the server runs on this machine (a local
URL) and its processes' ``/proc`` entries are readable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Connection, text

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def load_average() -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def machine_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of all CPUs since boot, from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / _TICK, total / _TICK


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process (its threads included), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def server_pids(conn: Connection) -> list[int]:
    """This database's backends (not the one asking) and the server's background
    processes, when they are processes of this machine."""
    rows = conn.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND (datname = current_database() OR datname IS NULL)"
        )
    ).scalars()
    pids = [int(p) for p in rows]
    return [p for p in pids if _is_postgres(p)]


def _is_postgres(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in ("postgres", "postmaster")
    except OSError:
        return False


@dataclass
class Snapshot:
    """CPU readings at one moment: the machine's, and the server processes' by pid."""

    machine: tuple[float, float] | None
    server: dict[int, float]

    @classmethod
    def take(cls, conn: Connection | None) -> Snapshot:
        server: dict[int, float] = {}
        if conn is not None:
            for pid in server_pids(conn):
                cpu = process_cpu(pid)
                if cpu is not None:
                    server[pid] = cpu
        return cls(machine_busy(), server)


@dataclass
class Used:
    """CPU used between two snapshots: the server's seconds (None when its processes were
    not readable), the machine's busy seconds, and the seconds all CPUs had."""

    server: float | None
    machine_busy: float | None
    machine_total: float | None


def used(before: Snapshot, after: Snapshot) -> Used:
    """CPU used from ``before`` to ``after``. A server process that started in between
    counts whole (it started after ``before``); one that ended in between is missed."""
    server = None
    if after.server:
        server = sum(cpu - before.server.get(pid, 0.0) for pid, cpu in after.server.items())
    busy = total = None
    if before.machine and after.machine:
        busy = after.machine[0] - before.machine[0]
        total = after.machine[1] - before.machine[1]
    return Used(server, busy, total)
