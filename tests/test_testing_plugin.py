"""The pytest plugin we ship: a DSN from the environment, else Docker, else a clear skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobqueue import JobQueue, migrate

HOST_TEST = """
def test_uses_postgres(jobqueue_postgres_url):
    assert jobqueue_postgres_url.startswith("postgresql")
"""


def _run_host_suite(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_host.py").write_text(HOST_TEST)
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JOBQUEUE_TEST_POSTGRES_URL", "JOBQUEUE_REQUIRE_POSTGRES")
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**clean, "DOCKER_HOST": "unix:///nonexistent/docker.sock", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_postgres_or_docker_the_fixture_skips_with_the_reason(tmp_path: Path) -> None:
    result = _run_host_suite(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "JOBQUEUE_TEST_POSTGRES_URL" in result.stdout and "Docker" in result.stdout


def test_without_postgres_the_reason_is_one_summary_line_not_one_per_test(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_more.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('n', range(3))\n"
        "def test_one(jobqueue_postgres_url, n):\n    pass\n\n"
        "def test_two(jobqueue_postgres_server_url):\n    pass\n"
    )
    result = _run_host_suite(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 skipped" in result.stdout, result.stdout
    reasons = [line for line in result.stdout.splitlines() if "need a server" in line]
    assert len(reasons) == 1, result.stdout
    assert reasons[0].startswith("SKIPPED [5] "), reasons[0]
    assert "PostgresUnavailable" not in reasons[0]


def test_when_postgres_is_required_the_fixture_fails_instead(tmp_path: Path) -> None:
    result = _run_host_suite(tmp_path, JOBQUEUE_REQUIRE_POSTGRES="1")
    assert result.returncode == 1
    assert "1 failed" in result.stdout or "1 error" in result.stdout


@pytest.mark.postgres
def test_a_dsn_from_the_environment_gives_a_fresh_database(
    jobqueue_postgres_server_url: str, tmp_path: Path
) -> None:
    result = _run_host_suite(tmp_path, JOBQUEUE_TEST_POSTGRES_URL=jobqueue_postgres_server_url)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout


@pytest.mark.postgres
def test_the_session_database_is_usable(jobqueue_postgres_url: str) -> None:
    assert "jobqueue_test_" in jobqueue_postgres_url
    migrate(jobqueue_postgres_url, table="plugin_check")
    with JobQueue(jobqueue_postgres_url, table="plugin_check") as q:
        assert q.is_postgres and q.enqueue("image", {}).status.value == "pending"
