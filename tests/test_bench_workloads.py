"""The issue-15 measurements of the benchmark suite run, and their SQL counts hold, on a
few jobs (`benchmarks.cost`, `benchmarks.scaleout`, `benchmarks.fair`, the peer
comparison's bare-SQL column). No timing is
checked: the numbers are the benchmark's to print, not the tests' to judge."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks import cost, fair, scaleout
from benchmarks.common import QUICK, Bench, Result
from benchmarks.peers import harness, raw_side


def _bench(url: str, **sizes: object) -> Bench:
    return Bench(url, replace(QUICK, **sizes), quiet=True)


def _by_name(results: list[Result]) -> dict[str, Result]:
    return {r.bench: r for r in results}


def test_cost_counts_every_job_of_each_phase(postgres_url: str) -> None:
    bench = _bench(postgres_url, cost_jobs=40)
    try:
        cost.run(bench)
    finally:
        bench.cleanup()
    got = _by_name(bench.results)
    for variant, phases in {
        "raw": ("enqueue", "claim", "complete"),
        "steps": ("enqueue", "claim", "complete"),
        "worker": ("enqueue", "drain"),
    }.items():
        for phase in phases:
            extra = got[f"cost_{variant}_{phase}"].extra
            table = extra["tables"]["table"]
            if phase == "enqueue":
                assert table["n_tup_ins"] == 40
            else:  # a claim and a completion each update every job once
                assert table["n_tup_upd"] == 40 * (2 if phase == "drain" else 1)
            if "per_relation" in extra:  # pg_walinspect was there: the bytes add up
                parts = sum(r["bytes_per_job"] for r in extra["per_relation"].values())
                parts += extra["commit_bytes_per_job"]
                assert parts == pytest.approx(got[f"cost_{variant}_{phase}"].value, abs=0.1)
    raw_life = got["cost_raw"].extra
    if raw_life["index_entries_by_index"]:
        # the bare table: the key on insert, claim and completion; the pending index once
        assert raw_life["index_entries_by_index"] == {"pkey": 3.0, "pending": 1.0}
        assert got["cost_steps"].extra["index_entries_per_job"] >= 4


def test_scaleout_drains_each_job_once_in_every_process_count(postgres_url: str) -> None:
    bench = _bench(postgres_url, scaleout_workers=(1, 2), scaleout_jobs=300, scaleout_rounds=1)
    try:
        scaleout.run(bench)  # raises if a count finds a job not completed exactly once
    finally:
        bench.cleanup()
    got = _by_name(bench.results)
    for n in (1, 2):
        extra = got[f"scaleout_w{n}"].extra
        assert extra["exactly_once"]
        assert sum(extra["per_process_handled"]) == 300
        assert len(extra["per_process_handled"]) == n
    assert "scaleout_flattens_at" in got


def test_fair_reports_its_rate_against_one_owner(postgres_url: str) -> None:
    bench = _bench(postgres_url, fair_jobs=300, fair_rounds=1)
    try:
        fair.run(bench)
    finally:
        bench.cleanup()
    got = _by_name(bench.results)
    many, one = got["fair_100_owners"], got["fair_single_owner"]
    assert many.ratio == pytest.approx(many.value / one.value)
    assert many.extra["completed_once"] == 300
    assert many.extra["owners_started"] == fair.OWNERS


@pytest.mark.parametrize("kind", harness.KINDS)
def test_the_bare_sql_column_does_each_workload_once(postgres_url: str, kind: str) -> None:
    bench = _bench(postgres_url)
    task = harness.Task(bench.libpq_url(), kind, 7, 3)
    try:
        out = raw_side.run(bench, task)
    finally:
        bench.cleanup()
    assert out["exactly_once"], out
    assert out["rows"] == harness.expected_jobs(task)
    if kind == harness.PICKUP:
        assert len(out["samples_s"]) == 7
    else:
        assert out["seconds"] > 0 and out["client_cpu_s"] >= 0
