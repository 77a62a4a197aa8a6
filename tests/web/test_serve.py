"""``jobqueue serve`` as a user runs it: a real process, a real port, SIGINT to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from jobqueue import ConfigurationError, JobQueue, migrate
from jobqueue.web.serve import load_identify
from tests.support.ports import free_port

STARTUP_TIMEOUT = 30.0


@contextmanager
def jobqueue_serve(tmp_path: Path, *args: str, output: list[str] | None = None) -> Iterator[str]:
    """`jobqueue serve` on a free port until SIGINT; its output goes to ``output``."""
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    migrate(url)
    port = free_port()
    env = {
        **os.environ,
        "JOBQUEUE_DATABASE_URL": url,
        "MOCK_AI": "true",
        "PYTHONPATH": str(tmp_path),
    }
    env.pop("DEFAPI_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobqueue", "serve", "--port", str(port), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jobqueue serve exited early: {proc.stdout and proc.stdout.read()}")
            try:
                httpx.get(base + "/static/jobqueue.js", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("jobqueue serve did not answer")
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            printed, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            printed, _ = proc.communicate()
        if output is not None:
            output.append(printed)
    assert proc.returncode == 0, printed


def wait_status(client: httpx.Client, job_id: str, wanted: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/jobs/{job_id}").json()
        if job["status"] == wanted:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never became {wanted}")


def test_serve_runs_the_api_with_a_worker(tmp_path: Path) -> None:
    output: list[str] = []
    with jobqueue_serve(tmp_path, output=output) as base, httpx.Client(base_url=base) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Generate" in page.text
        assert "jobqueue_owner=" in page.headers["set-cookie"]
        # A static file is cacheable: no owner cookie on it, and no guessing its type.
        js = httpx.get(base + "/static/jobqueue.js")
        assert "set-cookie" not in js.headers
        assert js.headers["x-content-type-options"] == "nosniff"
        created = client.post("/jobs", json={"prompt": "served"})
        assert created.status_code == 202
        job = wait_status(client, created.json()["id"], "completed")
        assert str(job["preview_url"]).endswith(".svg")
    banner = output[0].splitlines()[0]
    assert banner.startswith("jobqueue serve: http://127.0.0.1:"), banner
    assert "worker on (generator: mock)" in banner, banner
    assert f"database SQLite file {tmp_path / 'serve.db'} (table" in banner, banner


def test_serve_on_a_busy_port_is_one_line_and_claims_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    migrate(url)
    with JobQueue(url) as q:
        waiting = q.enqueue("image", {"prompt": "must stay pending"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "JOBQUEUE_DATABASE_URL": url, "MOCK_AI": "true"}
        done = subprocess.run(
            [sys.executable, "-m", "jobqueue", "serve", "--port", str(port)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"Error: cannot listen on 127.0.0.1:{port}: "), line
    assert "pick another --port" in line
    with JobQueue(url) as q:
        job = q.get(waiting.id)
    assert (job.status.value, job.attempts) == ("pending", 0)  # no worker ever claimed it


def test_serve_without_worker_only_enqueues(tmp_path: Path) -> None:
    with jobqueue_serve(tmp_path, "--no-worker") as base, httpx.Client(base_url=base) as client:
        job_id = client.post("/jobs", json={"prompt": "waits"}).json()["id"]
        time.sleep(1.5)  # a worker, were there one, would have claimed it by now
        assert client.get(f"/jobs/{job_id}").json()["status"] == "pending"


def test_serve_takes_the_owner_from_an_identify_hook(tmp_path: Path) -> None:
    (tmp_path / "host_auth.py").write_text(
        textwrap.dedent(
            """
            async def owner_of(request):
                token = request.headers.get("authorization", "")
                return token.removeprefix("Bearer ") or None
            """
        )
    )
    with (
        jobqueue_serve(tmp_path, "--no-worker", "--identify", "host_auth:owner_of") as base,
        httpx.Client(base_url=base) as client,
    ):
        assert client.post("/jobs", json={"prompt": "x"}).status_code == 401
        mine = client.post("/jobs", json={"prompt": "x"}, headers={"Authorization": "Bearer ann"})
        assert mine.status_code == 202
        job_id = mine.json()["id"]
        other = client.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer bo"})
        assert other.status_code == 404
        assert "set-cookie" not in mine.headers


@pytest.mark.parametrize("path", ["no_colon", "json:nope", "no_such_module_xyz:f", "json:__doc__"])
def test_bad_identify_hooks_are_refused(path: str) -> None:
    with pytest.raises(ConfigurationError):
        load_identify(path)


def test_serve_with_metrics_counts_its_workers_jobs(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    output: list[str] = []
    with (
        jobqueue_serve(tmp_path, "--metrics", output=output) as base,
        httpx.Client(base_url=base) as client,
    ):
        created = client.post("/jobs", json={"prompt": "counted"})
        assert created.status_code == 202
        wait_status(client, created.json()["id"], "completed")
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    labels = (("kind", "image"), ("queue", "default"))
    assert found["jobqueue_jobs_started_total", labels] == 1
    assert found["jobqueue_database_up", ()] == 1
    assert "; metrics http://127.0.0.1:" in output[0].splitlines()[0]
