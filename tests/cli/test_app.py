"""``jobqueue worker --app`` and ``jobqueue enqueue --app``: the installed console script
in a subprocess, with an application module written to its (empty) working directory and
no PYTHONPATH, as a user runs it from their project."""

from __future__ import annotations

import json
import time
from pathlib import Path
from textwrap import dedent

import pytest

from jobqueue import JobQueue, Status, migrate
from tests.cli.helpers import Run, clean_env, worker_running

APP = '''
    """A shop's job kinds (the module a user points --app at)."""

    from jobqueue import HandlerResult, Registry

    jobs = Registry()

    @jobs.handler("email", max_attempts=5, timeout=30, queue="mail")
    def send_email(job, ctx):
        return {"sent_to": job.payload["to"]}

    @jobs.handler("thumbnail")
    async def thumbnail(job, ctx):
        await ctx.report_progress(50, "resizing")
        return HandlerResult({"width": 128}, result_url=job.payload["source"] + "?w=128")

    def make_jobs():
        return jobs

    settings = {"smtp": "localhost"}

    def make_nothing():
        return None
'''


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The application module `shop_jobs` in the directory the command runs in."""
    (tmp_path / "shop_jobs.py").write_text(dedent(APP))
    (tmp_path / "shop_broken.py").write_text("import shop_missing_dependency\n")
    return tmp_path


def wait_until_final(queue: JobQueue, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(queue.get(i).is_final for i in ids):
        assert time.monotonic() < deadline, [queue.get(i).status for i in ids]
        time.sleep(0.1)


def test_worker_app_runs_the_users_kinds_and_image_jobs(
    run: Run, app: Path, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    base = ("--database-url", db_url, "--table", table_name)
    created = run(
        *base, "enqueue", "email", "--app", "shop_jobs:jobs",
        "--payload", '{"to": "ann@example.com"}', "--json",
    )  # fmt: skip
    assert created.code == 0 and created.err == "", created.err
    email = json.loads(created.out)
    # The kind's defaults from the registry, as the worker will claim them.
    assert (email["queue"], email["max_attempts"]) == ("mail", 5)
    thumb = run(*base, "enqueue", "thumbnail", "--app", "shop_jobs", "--payload",
                '{"source": "https://img.example/a.png"}')  # fmt: skip
    image = run(*base, "generate", "a red fox")
    assert thumb.code == image.code == 0, thumb.err + image.err
    ids = [email["id"], thumb.out.strip(), image.out.strip()]

    with JobQueue(db_url, table=table_name) as queue:
        # The factory form; the worker claims from the queues of the kinds (mail, default).
        with worker_running(app, base, "--app", "shop_jobs:make_jobs") as worker:
            wait_until_final(queue, ids)
        done = [queue.get(i) for i in ids]
    err = worker.output[1]
    assert worker.code == 0, err
    assert [j.status for j in done] == [Status.COMPLETED] * 3, [j.error for j in done]
    assert done[0].result == {"sent_to": "ann@example.com"}
    assert done[1].result_url == "https://img.example/a.png?w=128"
    assert done[2].result_url  # the mock generator's picture
    banner = err.splitlines()[0]
    assert "app shop_jobs:make_jobs (kinds email, thumbnail, image)" in banner, banner
    assert "queues mail, default" in banner and "generator: mock" in banner


def test_an_app_without_image_jobs_needs_no_generator(
    run: Run, app: Path, jobqueue_sqlite_url: str, table_name: str
) -> None:
    (app / "mail_only.py").write_text(
        dedent(
            """
            from jobqueue import Registry

            jobs = Registry(image=False)

            @jobs.handler("email")
            async def send(job, ctx):
                return "sent"
            """
        )
    )
    migrate(jobqueue_sqlite_url, table=table_name)
    base = ("--database-url", jobqueue_sqlite_url, "--table", table_name)
    email = run(*base, "enqueue", "email", "--app", "mail_only").out.strip()
    image = run(*base, "enqueue", "image", "--app", "mail_only", "--payload", '{"prompt": "x"}')
    assert "no handler is registered for job kind 'image'" in image.err
    # MOCK_AI=false without a key stops a worker that runs image jobs; this one runs none.
    refused = run(*base, "worker", "--app", "shop_jobs", env=clean_env(MOCK_AI="false"))
    refused.one_line_error(2, "DEFAPI_API_KEY", "Registry(image=False)")
    with JobQueue(jobqueue_sqlite_url, table=table_name) as queue:
        with worker_running(app, base, "--app", "mail_only") as worker:
            wait_until_final(queue, [email])
        assert queue.get(email).result == "sent"
        assert queue.get(image.out.strip()).status is Status.PENDING
    assert worker.code == 0, worker.output
    assert "generator: none (no image kind)" in worker.output[1].splitlines()[0]


@pytest.mark.parametrize(
    ("app_name", "fragments"),
    [
        (
            "shop_nowhere:jobs",
            ["cannot import shop_nowhere (No module named 'shop_nowhere')", "PYTHONPATH",
             "current directory"],
        ),
        ("shop_broken", ["importing shop_broken failed: ModuleNotFoundError",
                         "shop_missing_dependency"]),
        ("shop_jobs:settings", ["shop_jobs:settings is a dict, not a jobqueue Registry"]),
        ("shop_jobs:make_nothing", ["make_nothing() returned None, not a jobqueue Registry"]),
        ("shop_jobs:jbos", ["has no attribute 'jbos'", "it holds: shop_jobs:jobs"]),
    ],
    ids=["missing-module", "import-error", "not-a-registry", "factory-returns-none", "typo"],
)  # fmt: skip
def test_an_app_that_cannot_be_loaded_is_one_line_exit_2(
    run: Run, app: Path, jobqueue_sqlite_url: str, table_name: str, app_name: str,
    fragments: list[str],
) -> None:  # fmt: skip
    migrate(jobqueue_sqlite_url, table=table_name)
    base = ("--database-url", jobqueue_sqlite_url, "--table", table_name)
    env = clean_env(MOCK_AI="true")
    run(*base, "worker", "--app", app_name, env=env).one_line_error(2, app_name, *fragments)
    run(*base, "enqueue", "email", "--app", app_name).one_line_error(2, *fragments)
    # JOBQUEUE_APP names it just as well (a .env may hold it).
    by_env = run(*base, "worker", env=clean_env(MOCK_AI="true", JOBQUEUE_APP=app_name))
    by_env.one_line_error(2, *fragments)
    with JobQueue(jobqueue_sqlite_url, table=table_name) as queue:
        assert queue.list() == []


def test_enqueue_warns_about_a_kind_no_registered_handler_runs(
    run: Run, app: Path, jobqueue_sqlite_url: str, table_name: str
) -> None:
    migrate(jobqueue_sqlite_url, table=table_name)
    base = ("--database-url", jobqueue_sqlite_url, "--table", table_name)
    typo = run(*base, "enqueue", "emial", "--app", "shop_jobs:jobs", "--payload", "{}")
    assert typo.code == 0, typo.err
    (line,) = typo.err.splitlines()
    assert line == (
        "warning: no handler is registered for job kind 'emial' in --app shop_jobs:jobs "
        "(it runs: email, image, thumbnail); the job waits for a worker that runs this kind"
    )
    given = run(*base, "enqueue", "email", "--app", "shop_jobs:jobs", "--queue", "urgent",
                "--max-attempts", "2", "--json")  # fmt: skip
    image = run(*base, "enqueue", "image", "--app", "shop_jobs:jobs", "--payload",
                '{"prompt": "a fox"}', "--json")  # fmt: skip
    plain = run(*base, "enqueue", "email", "--json")  # without --app: no check, no defaults
    for quiet in (given, image, plain):
        assert quiet.code == 0 and quiet.err == "", quiet.err
    assert (json.loads(given.out)["queue"], json.loads(given.out)["max_attempts"]) == (
        "urgent",
        2,
    )
    assert json.loads(image.out)["queue"] == json.loads(plain.out)["queue"] == "default"
    with JobQueue(jobqueue_sqlite_url, table=table_name) as queue:
        assert queue.get(typo.out.strip()).kind == "emial"


def test_all_kinds_fails_strays_and_logs_each_kind_once(
    run: Run, app: Path, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    base = ("--database-url", db_url, "--table", table_name)
    strays = [run(*base, "enqueue", "video").out.strip() for _ in range(3)]
    log_file = app / "worker.log"
    with JobQueue(db_url, table=table_name) as queue:
        # Without --all-kinds a worker leaves other kinds alone for their own workers.
        with worker_running(app, base, "--app", "shop_jobs") as worker:
            email = run(*base, "enqueue", "email", "--app", "shop_jobs",
                        "--payload", '{"to": "ann@example.com"}').out.strip()  # fmt: skip
            wait_until_final(queue, [email])
        assert queue.get(email).status is Status.COMPLETED
        assert all(queue.get(i).status is Status.PENDING for i in strays)
        assert "kind 'video'" not in worker.output[1]
        with worker_running(app, base, "--app", "shop_jobs", "--all-kinds",
                            "--log-file", str(log_file)) as worker:  # fmt: skip
            wait_until_final(queue, strays)
        assert all(queue.get(i).status is Status.FAILED for i in strays)
        assert "no handler for job kind 'video'" in (queue.get(strays[-1]).error or "")
    assert worker.code == 0, worker.output
    log = log_file.read_text()
    assert log.count("No handler for jobs of kind 'video'") == 1, log
    assert sum(job_id in log for job_id in strays) == 1, log  # the first one only
    assert log.count("status: failed") == 1, log
