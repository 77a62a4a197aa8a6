"""DefAPIGenerator against a real (fake) DefAPI HTTP server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from jobqueue import (
    AsyncJobQueue,
    ConfigurationError,
    GenerationError,
    JobQueue,
    LocalContext,
    RetryLater,
    Status,
)
from jobqueue.generators import DefAPIGenerator, GenerationRequest
from jobqueue.generators.defapi import DEFAULT_RETRY_LATER, MIN_RETRY_LATER
from jobqueue.models import MAX_DELAY
from jobqueue.worker import Worker
from jobqueue.wrappers import generate_image, generate_image_sync
from tests.support.fake_defapi import GOOGLE_PATH, OPENAI_PATH, QUERY_PATH, FakeDefAPI
from tests.worker.conftest import drain


def make(fake: FakeDefAPI, **overrides: Any) -> DefAPIGenerator:
    """A generator tuned for tests: short polls, tiny backoff, generous not-found grace."""
    settings: dict[str, Any] = {
        "base_url": fake.url,
        "poll_interval": 0.02,
        "backoff": (0.01, 0.05),
        "request_timeout": 5.0,
        "not_found_grace": 10.0,
        "timeout": 30.0,
    }
    key = overrides.pop("api_key", fake.api_key)
    settings.update(overrides)
    return DefAPIGenerator(key, **settings)


def submits(fake: FakeDefAPI) -> list[str]:
    return [path for method, path in fake.requests if method == "POST"]


async def test_success_returns_images_cost_and_progress(fake_defapi: FakeDefAPI) -> None:
    gen = make(fake_defapi)
    ctx = LocalContext()
    result = await generate_image(
        gen,
        "a lego castle",
        images=["https://example.invalid/in.png"],
        options={"aspect_ratio": "16:9"},
        context=ctx,
    )
    await gen.aclose()
    (task,) = fake_defapi.tasks_for("a lego castle")
    assert result.images == (f"https://cdn.fake-defapi.invalid/{task.task_id}/0.png",)
    assert result.url == result.images[0]
    assert result.cost == Decimal("0.04") and result.cost_unit == "credits"
    assert result.raw["data"]["status"] == "success"
    # The body DefAPI received: prompt, default model, input images and the options.
    assert task.body == {
        "prompt": "a lego castle",
        "model": "google/nano-banana",
        "images": ["https://example.invalid/in.png"],
        "aspect_ratio": "16:9",
    }
    assert ctx.remote_task_id == task.task_id
    assert [m for _, m in ctx.progress] == ["DefAPI: pending", "DefAPI: in_progress"]
    assert fake_defapi.submissions["a lego castle"] == 1
    assert submits(fake_defapi) == [GOOGLE_PATH]
    assert set(fake_defapi.auth_headers) == {f"Bearer {fake_defapi.api_key}"}


@pytest.mark.parametrize("model", ["openai/gpt-image-1", "gpt-image-1"])
async def test_openai_models_use_the_gpt_image_endpoint(
    fake_defapi: FakeDefAPI, model: str
) -> None:
    gen = make(fake_defapi)
    result = await generate_image(gen, "a robot", model=model, options={"size": "1024x1024"})
    await gen.aclose()
    assert result.images
    assert submits(fake_defapi) == [OPENAI_PATH]
    (task,) = fake_defapi.tasks_for("a robot")
    assert task.body["model"] == model and task.body["size"] == "1024x1024"


async def test_options_cannot_replace_prompt_or_model(fake_defapi: FakeDefAPI) -> None:
    gen = make(fake_defapi)
    await generate_image(gen, "real prompt", options={"prompt": "evil", "model": "openai/x"})
    await gen.aclose()
    (task,) = fake_defapi.tasks_for("real prompt")
    assert task.body["model"] == "google/nano-banana"


@pytest.mark.parametrize("as_404", [True, False], ids=["http-404", "code-not-found"])
async def test_fresh_task_not_found_is_tolerated(fake_defapi: FakeDefAPI, as_404: bool) -> None:
    fake_defapi.scenario(not_found_polls=3, not_found_as_404=as_404)
    gen = make(fake_defapi)
    result = await generate_image(gen, "patience")
    await gen.aclose()
    assert result.images
    queries = [p for m, p in fake_defapi.requests if p == QUERY_PATH]
    assert len(queries) >= 3 + 3  # three not-found answers, then pending, in_progress, success
    assert fake_defapi.submissions["patience"] == 1


async def test_not_found_beyond_the_grace_fails(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(not_found_polls=10_000)
    gen = make(fake_defapi, not_found_grace=0.2)
    with pytest.raises(GenerationError, match="does not know task"):
        await generate_image(gen, "never there")
    await gen.aclose()
    assert fake_defapi.submissions["never there"] == 1


async def test_a_submit_429_raises_retry_later_at_once_without_a_task(
    fake_defapi: FakeDefAPI,
) -> None:
    fake_defapi.scenario(submit_429=1, retry_after="3")
    gen = make(fake_defapi)
    ctx = LocalContext()
    with pytest.raises(RetryLater) as info:
        await generate_image(gen, "busy", context=ctx)
    # Not retried inside the generation: one request, no task made, nothing saved.
    assert fake_defapi.submit_requests["busy"] == 1 and fake_defapi.submissions["busy"] == 0
    assert ctx.remote_task_id is None
    assert info.value.after == 3.0
    assert info.value.reason == f"DefAPI POST {GOOGLE_PATH}: HTTP 429 (rate limited, slow down)"
    # Called again later (as the worker does), it submits once.
    assert (await generate_image(gen, "busy", context=ctx)).images
    await gen.aclose()
    assert fake_defapi.submissions["busy"] == 1


async def test_a_query_429_raises_retry_later_and_the_next_call_polls_the_saved_task(
    fake_defapi: FakeDefAPI,
) -> None:
    fake_defapi.scenario(query_429=1, retry_after="3")
    gen = make(fake_defapi)
    ctx = LocalContext()
    with pytest.raises(RetryLater) as info:
        await generate_image(gen, "polled", context=ctx)
    assert info.value.after == 3.0 and "HTTP 429" in info.value.reason
    (task,) = fake_defapi.tasks_for("polled")
    assert ctx.remote_task_id == task.task_id
    result = await generate_image(gen, "polled", context=ctx)
    await gen.aclose()
    assert result.raw["data"]["task_id"] == task.task_id
    assert fake_defapi.submissions["polled"] == 1 and fake_defapi.submit_requests["polled"] == 1


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


#: Retry-After headers written as HTTP dates, made when the test runs.
DATES = {"in 20 s": 20.0, "a minute ago": -60.0}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("  7.5 ", 7.5),
        ("in 20 s", 20.0),
        (None, DEFAULT_RETRY_LATER),  # no Retry-After at all
        ("soon, probably", DEFAULT_RETRY_LATER),
        ("nan", MIN_RETRY_LATER),
        ("0", MIN_RETRY_LATER),  # never a tight loop
        ("a minute ago", MIN_RETRY_LATER),  # a date in the past
        ("-5", MIN_RETRY_LATER),
        ("86400", 600.0),  # cut to max_retry_later
        ("1e999", 600.0),
    ],
    ids=[
        "seconds",
        "fraction",
        "http-date",
        "missing",
        "garbage",
        "nan",
        "zero",
        "past-date",
        "negative",
        "long",
        "infinite",
    ],
)
async def test_a_429_waits_what_retry_after_says_within_bounds(
    fake_defapi: FakeDefAPI, header: str | None, expected: float
) -> None:
    if header in DATES:
        header = http_date(DATES[header])
    fake_defapi.scenario(submit_429=1, retry_after=header)
    gen = make(fake_defapi, max_retry_later=600)
    with pytest.raises(RetryLater) as info:
        await generate_image(gen, "told to wait")
    await gen.aclose()
    assert info.value.after == pytest.approx(expected, abs=1.5)
    assert fake_defapi.submissions["told to wait"] == 0


def test_max_retry_later_is_checked() -> None:
    for bad in (0.5, MAX_DELAY.total_seconds() + 1):
        with pytest.raises(ConfigurationError, match="max_retry_later"):
            DefAPIGenerator("sk-test-key", max_retry_later=bad)


async def test_a_503_retry_after_is_honoured_up_to_its_cap(
    fake_defapi: FakeDefAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue")
    fake_defapi.scenario(submit_503=2, retry_after_503="3600")
    gen = make(fake_defapi, max_retry_after=0.05)
    result = await generate_image(gen, "capped")
    await gen.aclose()
    assert result.images
    assert caplog.text.count("retrying in 0.05 s") == 2
    assert "3600" not in caplog.text.split("retrying in")[1]
    assert fake_defapi.submissions["capped"] == 1


async def test_submit_503_is_retried(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(submit_503=2)
    gen = make(fake_defapi)
    assert (await generate_image(gen, "overloaded")).images
    await gen.aclose()
    assert fake_defapi.submit_requests["overloaded"] == 3
    assert fake_defapi.submissions["overloaded"] == 1


async def test_query_500s_are_retried(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(query_500=3)
    gen = make(fake_defapi)
    assert (await generate_image(gen, "flaky")).images
    await gen.aclose()


async def test_query_errors_give_up_after_max_attempts(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(query_500=100)
    gen = make(fake_defapi, max_attempts=3)
    with pytest.raises(GenerationError, match="after 3 attempts") as info:
        await generate_image(gen, "down")
    await gen.aclose()
    assert info.value.retryable  # the task id is saved: a job retry resumes it
    queries = [p for _, p in fake_defapi.requests if p == QUERY_PATH]
    assert len(queries) == 3


async def test_submit_500_is_not_retried(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(submit_500=1)
    gen = make(fake_defapi)
    with pytest.raises(GenerationError, match="may have accepted") as info:
        await generate_image(gen, "accepted then lost")
    await gen.aclose()
    assert not info.value.retryable
    assert fake_defapi.submit_requests["accepted then lost"] == 1
    assert fake_defapi.submissions["accepted then lost"] == 1


async def test_slow_submit_times_out_without_resubmitting(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(slow_submits=5, slow_seconds=1.5)
    gen = make(fake_defapi, request_timeout=0.3)
    with pytest.raises(GenerationError, match="may have accepted") as info:
        await generate_image(gen, "slow submit")
    await gen.aclose()
    assert "ReadTimeout" in str(info.value)
    assert fake_defapi.submit_requests["slow submit"] == 1


async def test_slow_query_is_retried(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(slow_queries=1, slow_seconds=1.5)
    gen = make(fake_defapi, request_timeout=0.3)
    assert (await generate_image(gen, "slow query")).images
    await gen.aclose()
    assert fake_defapi.submissions["slow query"] == 1


async def test_connection_refused_submit_is_retried_then_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = DefAPIGenerator(
        "sk-nobody-listens-1234", base_url=f"http://127.0.0.1:{port}", backoff=(0.01, 0.02)
    )
    with pytest.raises(GenerationError, match="did not take the task after 5 attempts") as info:
        await generate_image(gen, "nobody home")
    await gen.aclose()
    assert info.value.retryable
    assert "ConnectError" in str(info.value)


async def test_failed_task_reports_the_reason(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(fail_reason="content policy violation")
    gen = make(fake_defapi)
    with pytest.raises(GenerationError, match="failed: content policy violation"):
        await generate_image(gen, "forbidden")
    await gen.aclose()


async def test_code_not_zero_on_submit_carries_the_provider_message(
    fake_defapi: FakeDefAPI,
) -> None:
    fake_defapi.scenario(submit_error="insufficient balance")
    gen = make(fake_defapi)
    with pytest.raises(GenerationError, match="insufficient balance") as info:
        await generate_image(gen, "broke")
    await gen.aclose()
    assert not info.value.retryable
    assert fake_defapi.submit_requests["broke"] == 1


@pytest.mark.parametrize("where", ["submit", "query"])
async def test_malformed_json_is_a_clear_error(fake_defapi: FakeDefAPI, where: str) -> None:
    if where == "submit":
        fake_defapi.scenario(malformed_submit=True)
    else:
        fake_defapi.scenario(malformed_queries=1)
    gen = make(fake_defapi)
    with pytest.raises(GenerationError, match="not JSON"):
        await generate_image(gen, "garbled")
    await gen.aclose()
    assert fake_defapi.submit_requests["garbled"] == 1


async def test_bad_key_fails_at_once_and_is_scrubbed(fake_defapi: FakeDefAPI) -> None:
    wrong = "sk-wrong-0123456789abcdef"
    gen = make(fake_defapi, api_key=wrong)
    with pytest.raises(GenerationError, match="HTTP 401") as info:
        await generate_image(gen, "who am i")
    await gen.aclose()
    # The fake echoes the presented key in its message; the error must not.
    assert wrong not in str(info.value)
    assert "DEFAPI_API_KEY" in str(info.value)
    assert not info.value.retryable
    assert len(fake_defapi.requests) == 1


async def test_a_saved_task_is_polled_not_resubmitted(fake_defapi: FakeDefAPI) -> None:
    gen = make(fake_defapi)
    task_id = await gen.submit(GenerationRequest("resume me"))
    ctx = LocalContext(remote_task_id=task_id)
    result = await generate_image(gen, "resume me", context=ctx)
    await gen.aclose()
    assert fake_defapi.submissions["resume me"] == 1
    assert result.raw["data"]["task_id"] == task_id


async def test_a_saved_task_that_failed_is_replaced(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario("second chance", fail_reason="upstream hiccup")
    gen = make(fake_defapi)
    old = await gen.submit(GenerationRequest("second chance"))
    fake_defapi.scenario("second chance")  # tasks submitted from now on succeed
    ctx = LocalContext(remote_task_id=old)
    result = await generate_image(gen, "second chance", context=ctx)
    await gen.aclose()
    assert fake_defapi.submissions["second chance"] == 2
    assert ctx.remote_task_id != old and result.raw["data"]["task_id"] == ctx.remote_task_id


async def test_a_saved_task_unknown_to_defapi_is_replaced(fake_defapi: FakeDefAPI) -> None:
    gen = make(fake_defapi, not_found_grace=0.1)
    ctx = LocalContext(remote_task_id="task-expired-long-ago")
    result = await generate_image(gen, "expired", context=ctx)
    await gen.aclose()
    assert result.images
    assert fake_defapi.submissions["expired"] == 1
    assert ctx.remote_task_id != "task-expired-long-ago"


class OrderContext(LocalContext):
    """Records what the server had seen when the task id was saved."""

    def __init__(self, fake: FakeDefAPI) -> None:
        super().__init__()
        self.fake = fake
        self.seen_at_save: list[tuple[str, str]] | None = None

    async def save_remote_task_id(self, task_id: str) -> None:
        self.seen_at_save = list(self.fake.requests)
        await super().save_remote_task_id(task_id)


async def test_task_id_is_saved_before_polling(fake_defapi: FakeDefAPI) -> None:
    ctx = OrderContext(fake_defapi)
    gen = make(fake_defapi)
    await generate_image(gen, "order", context=ctx)
    await gen.aclose()
    assert ctx.seen_at_save == [("POST", GOOGLE_PATH)]


async def test_generation_timeout(fake_defapi: FakeDefAPI) -> None:
    fake_defapi.scenario(hold=True)
    gen = make(fake_defapi, timeout=0.3)
    ctx = LocalContext()
    with pytest.raises(GenerationError, match=r"did not finish within 0\.3 s") as info:
        await generate_image(gen, "forever", context=ctx)
    await gen.aclose()
    assert info.value.retryable and ctx.remote_task_id is not None


async def test_key_never_in_logs_errors_reprs_or_raw(
    fake_defapi: FakeDefAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = fake_defapi.api_key
    gen = make(fake_defapi, max_attempts=3)
    fake_defapi.scenario("retries", submit_503=1, query_500=1, not_found_polls=1)
    ok = await generate_image(gen, "retries")
    fake_defapi.scenario("fails", fail_reason=f"quota for key {key} exceeded")
    with pytest.raises(GenerationError) as failed:
        await generate_image(gen, "fails")
    await gen.aclose()
    assert {r.name.split(".")[0] for r in caplog.records} >= {"httpx", "jobqueue"}
    assert key not in caplog.text
    assert all(key not in r.getMessage() for r in caplog.records)
    assert key not in str(ok.raw) and key not in repr(ok)
    assert key not in str(failed.value) and "****" in str(failed.value)
    assert key not in repr(gen) and key[-4:] in repr(gen)


def open_connections_to(url: str) -> int:
    """Client-side TCP connections of this host still established to ``url``'s port."""
    port = f"{urlsplit(url).port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2].endswith(f":{port}") and row[3] == "01")


def test_sync_form_runs_twice_with_fresh_loops(fake_defapi: FakeDefAPI) -> None:
    gen = make(fake_defapi)
    first = generate_image_sync(gen, "one")
    second = generate_image_sync(gen, "two")
    assert first.images and second.images and first.images != second.images


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")
def test_sync_form_closes_its_connections(fake_defapi: FakeDefAPI) -> None:
    gen = make(fake_defapi)
    for n in range(3):
        generate_image_sync(gen, f"call {n}")
        # The keep-alive connection of each call's client is closed with its loop.
        assert open_connections_to(fake_defapi.url) == 0


@pytest.mark.parametrize("key", ["", "   ", "sk-abc\nInjected: yes"])
def test_unusable_keys_are_configuration_errors(key: str) -> None:
    with pytest.raises(ConfigurationError):
        DefAPIGenerator(key)


# -- in a worker: the job held back, the key paused, one paid submission -----------------------


@pytest.mark.parametrize("where", ["submit", "query"])
async def test_a_429_in_a_worker_holds_the_job_back_pauses_the_key_and_pays_once(
    aqueue: AsyncJobQueue, migrated: tuple[str, str], fake_defapi: FakeDefAPI, where: str
) -> None:
    # The pause must outlast the worker's run and the other claim below on a loaded machine.
    fake_defapi.scenario("first", **{f"{where}_429": 1}, retry_after="6")
    prompts = ["first", "second", "third"]
    # One attempt each: a 429 that spent it would fail the job.
    jobs = [
        await aqueue.enqueue("image", GenerationRequest(p).to_payload(), max_attempts=1)
        for p in prompts
    ]
    gen = make(fake_defapi)
    worker = Worker(aqueue, generator=gen, concurrency=1, lease=10, listen=False)
    assert await worker.run_until_idle() == 1  # the hold-back; the pause stops the others

    held = await aqueue.get(jobs[0].id)
    assert (held.status, held.attempts, held.locked_by) == (Status.PENDING, 0, None)
    assert (held.run_at - held.updated_at).total_seconds() == pytest.approx(6, abs=0.25)
    assert held.errors[-1]["error"].startswith(f"RetryLater: DefAPI {where_of(where)}: HTTP 429")
    (limit,) = [x for x in await aqueue.list_limits() if (x.scope, x.name) == ("key", "image")]
    # Paused until the held-back job is due again, to the microsecond (one clock: the
    # hold-back's, however long the pause's own statement came after it).
    assert limit.paused and limit.paused_until == held.run_at
    url, table = migrated
    with JobQueue(url, table=table) as other:  # another worker's claim, during the pause
        assert other.claim("second-worker", kinds=["image"], limit=5) == []
    if where == "query":
        (task,) = fake_defapi.tasks_for("first")
        assert held.remote_task_id == task.task_id
    assert fake_defapi.submissions["second"] == fake_defapi.submissions["third"] == 0

    await drain(worker, aqueue, [j.id for j in jobs])
    await gen.aclose()
    done = [await aqueue.get(j.id) for j in jobs]
    assert [(j.status, j.attempts) for j in done] == [(Status.COMPLETED, 1)] * 3
    # Exactly one paid submission per job over the whole run (a 429 creates no task).
    assert [fake_defapi.submissions[p] for p in prompts] == [1, 1, 1]
    assert fake_defapi.submit_requests["first"] == (2 if where == "submit" else 1)
    assert done[0].remote_task_id == fake_defapi.tasks_for("first")[0].task_id


def where_of(where: str) -> str:
    return f"POST {GOOGLE_PATH}" if where == "submit" else f"GET {QUERY_PATH}"


async def test_a_failed_task_reports_what_it_consumed(fake_defapi: FakeDefAPI) -> None:
    """A DefAPI task that failed still cost its ``consumed``: the error carries it, so the
    worker keeps it on the job."""
    fake_defapi.scenario(fail_reason="content policy violation", failed_consumed="0.04")
    gen = make(fake_defapi)
    with pytest.raises(GenerationError) as caught:
        await gen.generate(GenerationRequest("a fox"), LocalContext())
    assert caught.value.cost == Decimal("0.04") and caught.value.cost_unit == "credits"
