"""`jobqueue worker --metrics-port`: the worker serves its metrics and the database's
gauges over HTTP on loopback while it runs jobs, and says how to install the extra when
prometheus-client is missing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from jobqueue import JobQueue, migrate
from tests.cli.helpers import Result, clean_env, worker_running
from tests.support.ports import free_port


def scrape(port: int) -> dict[str, float]:
    """Each sample of the worker's metrics as ``name{labels}``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}"] = s.value
    return found


def test_the_worker_serves_metrics_on_its_port(
    tmp_path: Path, jobqueue_sqlite_url: str, table_name: str
) -> None:
    migrate(jobqueue_sqlite_url, table=table_name)
    with JobQueue(jobqueue_sqlite_url, table=table_name) as q:
        ids = [q.enqueue("image", {"prompt": f"cat {i}"}).id for i in range(2)]
    port = free_port()
    base = ["--database-url", jobqueue_sqlite_url, "--table", table_name]
    with worker_running(tmp_path, base, "--metrics-port", str(port)) as worker:
        deadline = time.monotonic() + 60
        found: dict[str, float] = {}
        done = "jobqueue_job_outcomes_total{kind=image,outcome=completed,queue=default}"
        while found.get(done) != 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.2)
            try:
                found = scrape(port)
            except httpx.TransportError:
                continue  # not listening yet
    assert worker.code == 0, worker.output
    assert found["jobqueue_jobs_started_total{kind=image,queue=default}"] == 2
    assert found["jobqueue_database_up{}"] == 1
    assert found["jobqueue_job_run_seconds_count{kind=image,queue=default}"] == 2
    with JobQueue(jobqueue_sqlite_url, table=table_name) as q:
        assert all(q.get(i).status.value == "completed" for i in ids)


def test_metrics_port_without_the_extra_says_how_to_install_it(
    tmp_path: Path, jobqueue_sqlite_url: str
) -> None:
    script = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from jobqueue._console import main; "
        f"sys.argv = ['jobqueue', '--database-url', {jobqueue_sqlite_url!r}, "
        "'worker', '--metrics-port', '9']; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=clean_env(MOCK_AI="true"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    Result(done.returncode, done.stdout, done.stderr).one_line_error(
        2, "prometheus-client", "jobqueue[metrics]"
    )
