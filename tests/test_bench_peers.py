"""The peer comparison's own arithmetic (benchmarks/peers): the order of the runs, the
medians, the ratios and the side-by-side table. No database and no peer: the runs' JSON
lines are made up here."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from benchmarks.common import Sizes
from benchmarks.peers import compare, harness
from benchmarks.report import side_by_side


def test_the_runs_interleave_and_no_library_always_goes_first() -> None:
    chosen = compare.workloads(Sizes(), quick=False)
    runs = compare.schedule(chosen, ["jobqueue", "pgqueuer", "oban"], 3)

    assert len(runs) == 3 * len(chosen) * 3
    # each workload runs every library in turn before the next workload starts
    assert [lib for _, w, lib in runs[:3]] == ["jobqueue", "pgqueuer", "oban"]
    assert {w.name for _, w, _ in runs[:3]} == {chosen[0].name}
    firsts = [lib for _, _, lib in runs[:: len(chosen) * 3]]
    assert firsts == ["jobqueue", "pgqueuer", "oban"]
    per_library = 3 * len(chosen)
    assert Counter(lib for _, _, lib in runs) == dict.fromkeys(
        ["jobqueue", "pgqueuer", "oban"], per_library
    )


def test_quick_is_one_small_drain_and_the_full_set_follows_the_sizes() -> None:
    assert [w.name for w in compare.workloads(Sizes(), quick=True)] == ["drain_c10"]
    full = compare.workloads(Sizes(drain=7, drain_one=3, enqueue_one=5), quick=False)
    assert [(w.name, w.jobs) for w in full[:5]] == [
        ("drain_c1", 3),
        ("drain_c10", 7),
        ("drain_c50", 7),
        ("enqueue_one", 5),
        ("enqueue_batch", Sizes().enqueue_many),
    ]
    assert full[-1].metrics == ("p50", "p99")


def test_the_same_arithmetic_for_every_library() -> None:
    drain = compare.Workload("drain_c10", harness.DRAIN, 1000, 10)
    assert compare.metrics(drain, {"seconds": 2.0}) == {"rate": 500.0}
    pickup = compare.Workload("pickup", harness.PICKUP, 4, 10)
    got = compare.metrics(pickup, {"samples_s": [0.004, 0.001, 0.002, 0.003]})
    assert got == {"p50": 2.0, "p99": 4.0}
    assert compare.medians([{"rate": 3.0}, {"rate": 1.0}, {"rate": 2.0}]) == {"rate": 2.0}


def test_ratios_and_targets() -> None:
    drain = compare.Workload("drain_c10", harness.DRAIN, 1000, 10)
    pickup = compare.Workload("pickup", harness.PICKUP, 4, 10)
    assert compare.ratio(150.0, 100.0) == 1.5
    assert compare.ratio(1.0, 0.0) is None
    assert compare.met(drain, "rate", "pgqueuer", 1.5) is True
    assert compare.met(drain, "rate", "pgqueuer", 1.49) is False
    assert compare.met(drain, "rate", "procrastinate", 0.5) is None  # targets name PgQueuer
    assert compare.met(pickup, "p99", "oban", 0.9) is True  # latency: below every peer
    assert compare.met(pickup, "p99", "oban", 1.1) is False


def test_a_run_that_lost_or_doubled_a_job_is_not_exactly_once() -> None:
    task = harness.Task("postgresql://", harness.DRAIN, 3, 1)
    fields = {"peer": "p", "version": "1", "driver": "d", "seconds": 1.0}
    assert harness.result(task, rows=3, handled=[0, 1, 2], **fields)["exactly_once"]
    assert not harness.result(task, rows=3, handled=[0, 1, 1], **fields)["exactly_once"]
    assert not harness.result(task, rows=2, handled=[0, 1, 2], **fields)["exactly_once"]
    enqueue = harness.Task("postgresql://", harness.ENQUEUE_ONE, 3, 1)
    assert harness.result(enqueue, rows=4, **fields)["exactly_once"]  # and the warm-up job


def test_side_by_side_puts_each_peer_beside_jobqueue() -> None:
    results = [
        {"bench": "peer_drain_c10", "driver": "jobqueue", "value": 900, "unit": "jobs/s"},
        {"bench": "peer_drain_c10", "driver": "PgQueuer", "value": 600, "unit": "jobs/s"},
        {"bench": "raw_copy", "driver": "raw", "value": 1, "unit": "rows/s"},
    ]
    results[0]["peer"] = "jobqueue"
    results[1] |= {"peer": "pgqueuer", "ratio": 1.5}
    assert side_by_side(results) == [
        ("workload", "jobqueue", "PgQueuer"),
        ("drain_c10 (jobs/s)", "900", "600 (1.50)"),
    ]


def test_the_pickup_loop_times_from_enqueue_returning_and_drops_the_warm_up() -> None:
    started: list[float] = []
    arrived = asyncio.Event()
    running: list[asyncio.Task[None]] = []

    async def handler() -> None:
        await asyncio.sleep(0.002)
        started.append(time.perf_counter())
        arrived.set()

    async def enqueue(i: int) -> None:
        running.append(asyncio.get_running_loop().create_task(handler()))

    samples = asyncio.run(harness.pickup_samples(enqueue, arrived, started, 3, jitter=0))
    assert len(samples) == 3
    assert len(started) == 3 + harness.WARMUP
    assert all(0.001 < s < 1.0 for s in samples)


def test_the_stopwatch_counts_this_process_and_the_whole_machine() -> None:
    with harness.Stopwatch() as timed:
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:  # busy: CPU of this process
            pass
        time.sleep(0.1)  # idle: wall time only
    got = timed.fields()
    assert got["seconds"] >= 0.3
    assert 0.2 <= got["client_cpu_s"] < got["seconds"]
    if harness.machine_times() is not None:  # Linux: the machine ran this process at least
        assert got["machine_cpu_s"] >= 0.15


def test_cpu_per_job_is_the_median_of_the_runs_that_all_report_it() -> None:
    drain = compare.Workload("drain_c10", harness.DRAIN, 1000, 10)
    runs = [
        {"client_cpu_s": 0.1, "machine_cpu_s": 0.4},
        {"client_cpu_s": 0.3, "machine_cpu_s": 0.5},
        {"client_cpu_s": 0.2, "machine_cpu_s": 0.6},
    ]
    assert compare.cpu_per_job(drain, runs) == {"client": 200.0, "machine": 500.0}
    runs[1]["machine_cpu_s"] = None  # one run could not read the machine's CPU
    assert compare.cpu_per_job(drain, runs) == {"client": 200.0}


def test_side_by_side_shows_where_a_jobs_cpu_went() -> None:
    results = [
        {"bench": "peer_drain_c10", "driver": "jobqueue", "value": 900, "unit": "jobs/s"},
        {"bench": "peer_drain_c10", "driver": "PgQueuer", "value": 600, "unit": "jobs/s"},
    ]
    results[0] |= {"peer": "jobqueue", "client_cpu_us_per_job": 80, "machine_cpu_us_per_job": 300}
    results[1] |= {"peer": "pgqueuer", "ratio": 1.5}  # a run without CPU readings
    assert side_by_side(results) == [
        ("workload", "jobqueue", "PgQueuer"),
        ("drain_c10 (jobs/s)", "900", "600 (1.50)"),
        ("drain_c10, CPU µs/job: all = library + rest", "300 = 80 + 220", ""),
    ]
