"""A provider that echoes the API key never gets it, or a readable piece of it, stored,
shown to the job's owner or logged.

The fake DefAPI server (tests/support/fake_defapi.py) echoes the key, or pieces of it, wherever a
careless provider would: in error bodies short and long (the key straddling the point
where the client cuts them), in the task id, a status, the image URL, the text and extra
fields of its answer. A worker runs the job against SQLite and PostgreSQL; the test then
reads the job's row as stored, the web API's answers to the owner, and every log line, and
finds no run of 8 characters of the key in any of them (nor percent-encoded or
JSON-escaped). Keys that cannot be sent in an HTTP header are refused when configured.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.requests import Request

from jobqueue import AsyncJobQueue, ConfigurationError, GenerationError, LocalContext, Settings
from jobqueue.generators import DefAPIGenerator, GenerationRequest, GenerationResult, JobContext
from jobqueue.web import create_app
from jobqueue.worker import Worker
from jobqueue.wrappers import generate_image
from tests.support.fake_defapi import GOOGLE_PATH, FakeDefAPI

RUN = 8
#: A key with the characters that percent-encoding and JSON escaping change.
SPECIAL_KEY = "sk-live-Ab+Cd/Ef=Gh+Ij/Kl=Mn0123456789"


# -- the oracle ------------------------------------------------------------------------------


def key_pieces(key: str) -> set[str]:
    """Every run of RUN characters of the key, as is, percent-encoded and JSON-escaped."""
    escaped = json.dumps(key)[1:-1]
    forms = {key, quote(key, safe=""), escaped, escaped.replace("/", "\\/")}
    return {f[i : i + RUN] for f in forms for i in range(len(f) - RUN + 1)}


def strings(value: Any) -> Iterator[str]:
    """Every string in a value as read back (JSON text is read both as text and parsed)."""
    if isinstance(value, str):
        yield value
        try:
            parsed = json.loads(value)
        except ValueError:
            return
        if not isinstance(parsed, str):
            yield from strings(parsed)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings(v)
    elif value is not None:
        yield str(value)


def leaks(value: Any, key: str) -> list[str]:
    pieces = key_pieces(key)
    return sorted({p for text in strings(value) for p in pieces if p in text})


# -- running a job and reading everything it left -------------------------------------------


async def by_header(request: Request) -> str | None:
    return request.headers.get("x-user")


COLUMNS = ("status", "error", "errors", "result", "result_url", "progress_message",
           "remote_task_id")  # fmt: skip


async def run_job(
    aqueue: AsyncJobQueue,
    raw_sql: Callable[..., list[Any]],
    table_name: str,
    generator: Any,
    prompt: str,
) -> tuple[dict[str, Any], list[Any]]:
    """Enqueue ``prompt`` for alice, run it to the end with ``generator``, and return the row
    as stored and what the web API shows alice (the job, and her list of jobs)."""
    job = await aqueue.enqueue("image", {"prompt": prompt}, owner_id="alice", max_attempts=1)
    worker = Worker(aqueue, generator=generator, listen=False, poll_interval=0.05)
    await worker.run_until_idle()
    await generator.aclose()
    # The test's own table holds this one job.
    (row,) = raw_sql(f"SELECT {', '.join(COLUMNS)} FROM {table_name}")
    stored = dict(zip(COLUMNS, row, strict=True))
    app = create_app(aqueue, identify=by_header)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", headers={"X-User": "alice"}
    ) as alice:
        shown = await alice.get(f"/jobs/{job.id}")
        listed = await alice.get("/jobs")
    assert shown.status_code == 200 and listed.status_code == 200
    return stored, [shown.text, shown.json(), listed.text, listed.json()]


def defapi(fake: FakeDefAPI, **overrides: Any) -> DefAPIGenerator:
    settings: dict[str, Any] = {
        "base_url": fake.url,
        "poll_interval": 0.02,
        "backoff": (0.01, 0.02),
        "request_timeout": 5.0,
        "max_attempts": 2,
        "timeout": 30.0,
    }
    settings.update(overrides)
    return DefAPIGenerator(fake.api_key, **settings)


def echo_of(key: str, what: str) -> str:
    """What the provider echoes: the key, a piece of it, or an encoded form."""
    return {
        "key": key,
        "head": key[:-3],  # cut short at its end
        "tail": key[3:],  # cut short at its start
        "middle": key[6:26],
        "percent": quote(key, safe=""),
        "json": json.dumps(key)[1:-1].replace("/", "\\/"),
    }[what]


#: id: (scenario, what is echoed, the key, the final status, where the mask must show)
CASES: dict[str, tuple[dict[str, Any], str, str | None, str, str]] = {
    "error-json-piece": ({"echo_in": "submit_json"}, "tail", None, "failed", "error"),
    "error-text-short-piece": ({"echo_in": "submit_text"}, "head", None, "failed", "error"),
    # The 400 body is cut at 200 characters: the key starts 186 characters in.
    "error-text-cut-through-key": (
        {"echo_in": "submit_text", "echo_pad": 180}, "key", None, "failed", "error"),
    # A 200 that is not JSON is quoted up to 120 characters: the key starts 100 in.
    "garbled-answer-cut-through-key": (
        {"echo_in": "submit_garbled", "echo_pad": 100}, "key", None, "failed", "error"),
    # JSON that is not the envelope is quoted up to 120 characters: the key starts 102 in.
    "odd-json-cut-through-key": (
        {"echo_in": "submit_envelope", "echo_pad": 90}, "key", None, "failed", "error"),
    "refusals-retried-then-failed": ({"echo_in": "submit_503"}, "head", None, "failed", "log"),
    "failure-reason-piece": ({"fail_reason": "tail"}, "tail", None, "failed", "error"),
    "unknown-status-piece": ({"echo_in": "status"}, "middle", None, "completed", "log"),
    "task-id": ({"echo_in": "task_id"}, "key", None, "failed", "log"),
    "image-url": ({"echo_in": "image"}, "key", None, "completed", "result_url"),
    "image-url-percent-encoded": (
        {"echo_in": "image"}, "percent", SPECIAL_KEY, "completed", "result_url"),
    "error-text-json-escaped": ({"echo_in": "submit_text"}, "json", SPECIAL_KEY, "failed", "error"),
    "text": ({"echo_in": "text"}, "key", None, "completed", "result"),
    "raw-piece": ({"echo_in": "raw"}, "middle", None, "completed", "result"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
async def test_an_echoed_key_is_never_stored_shown_or_logged(
    case: str,
    aqueue: AsyncJobQueue,
    raw_sql: Callable[..., list[Any]],
    table_name: str,
    fake_defapi: FakeDefAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    scenario, what, special_key, status, masked_in = CASES[case]
    if special_key is not None:
        fake_defapi.api_key = special_key
    key = fake_defapi.api_key
    echoed = echo_of(key, what)
    if "fail_reason" in scenario:
        scenario = {"fail_reason": f"quota exceeded for {echoed}"}
    else:
        scenario = {**scenario, "echo": echoed}
    fake_defapi.scenario(case, **scenario)

    stored, shown = await run_job(aqueue, raw_sql, table_name, defapi(fake_defapi), case)

    assert stored["status"] == status, stored
    assert leaks(stored, key) == [], stored
    assert leaks(shown, key) == [], shown
    assert leaks([caplog.text, *(r.getMessage() for r in caplog.records)], key) == []
    # The echo did reach the client, and was masked where it would have been kept.
    where = caplog.text if masked_in == "log" else json.dumps(list(strings(stored[masked_in])))
    assert "****" in where, where


async def test_a_task_id_holding_the_key_is_not_saved(
    aqueue: AsyncJobQueue,
    raw_sql: Callable[..., list[Any]],
    table_name: str,
    fake_defapi: FakeDefAPI,
) -> None:
    fake_defapi.scenario("task-id", echo_in="task_id", echo=fake_defapi.api_key[2:])
    stored, _ = await run_job(aqueue, raw_sql, table_name, defapi(fake_defapi), "task-id")
    assert stored["status"] == "failed" and stored["remote_task_id"] is None
    assert "task id holds part of the API key" in stored["error"]


# -- a user's own generator ------------------------------------------------------------------


class OddProviderError(Exception):
    """An exception whose message is built from an attribute we cannot scrub in place."""

    def __init__(self, answer: httpx.Response) -> None:
        super().__init__("odd answer")
        self._answer = answer

    def __str__(self) -> str:
        return f"odd answer: {self._answer.text}"


class CarelessProvider:
    """A generator written without a thought for secrets: it quotes the provider's answers,
    and even its own key, in progress messages, errors, chained causes and results."""

    name = "careless"

    def __init__(self, fake: FakeDefAPI) -> None:
        self.url = fake.url
        self.key = fake.api_key

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as client:
            body = {"prompt": request.prompt, "model": "google/nano-banana"}
            answer = await client.post(GOOGLE_PATH, json=body)
        await context.report_progress(10, f"provider said: {answer.text[:70]}")
        if request.prompt == "odd":
            raise OddProviderError(answer)
        try:
            answer.raise_for_status()
        except httpx.HTTPStatusError as exc:
            exc.add_note(f"sent with Bearer {self.key}")
            raise GenerationError(f"provider refused: {answer.text}", retryable=False) from exc
        task_id = answer.json()["data"]["task_id"]
        return GenerationResult(
            images=(f"https://cdn.example.invalid/{task_id}.png?key={self.key}",),
            text=f"made with {self.key}",
            raw={"request": {"headers": headers}, "answer": answer.json()},
        )

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("prompt", ["refused", "odd", "fine"])
async def test_a_custom_generator_gets_the_same_scrubbing(
    prompt: str,
    aqueue: AsyncJobQueue,
    raw_sql: Callable[..., list[Any]],
    table_name: str,
    fake_defapi: FakeDefAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from jobqueue.generators import ScrubbedGenerator

    caplog.set_level(logging.DEBUG)
    key = fake_defapi.api_key
    if prompt != "fine":
        fake_defapi.scenario(prompt, echo_in="submit_json", echo=key[1:])
    generator = ScrubbedGenerator(CarelessProvider(fake_defapi), key)

    stored, shown = await run_job(aqueue, raw_sql, table_name, generator, prompt)

    assert stored["status"] == ("completed" if prompt == "fine" else "failed"), stored
    assert "****" in json.dumps(list(strings(stored)))
    assert leaks(stored, key) == [], stored
    assert leaks(shown, key) == [], shown
    assert leaks([caplog.text, *(r.getMessage() for r in caplog.records)], key) == []
    if prompt == "fine":
        return
    # Called directly, the exception and everything chained to it are scrubbed too.
    with pytest.raises(Exception) as raised:
        await generate_image(generator, prompt, context=LocalContext())
    told = traceback.format_exception(raised.value)
    assert leaks(told, key) == [], told
    assert "****" in "".join(told)
    if prompt == "refused":
        assert isinstance(raised.value.__cause__, httpx.HTTPStatusError)
        assert leaks(raised.value.__cause__.__notes__, key) == []


# -- keys that cannot be sent ----------------------------------------------------------------

BAD_KEYS = {
    "control-character": "sk-live-abc\x01defghijklmnop",
    "tab": "sk-live-abc\tdefghijklmnop",
    "line-break": "sk-live-abc\ndefghijklmnop",
    "non-ascii": "sk-live-abcdéfghijklmnop",
    "inner-space": "sk-live-abc defghijklmnop",
    "delete": "sk-live-abc\x7fdefghijklmnop",
}


@pytest.mark.parametrize("name", list(BAD_KEYS))
def test_a_key_that_cannot_be_sent_is_refused_by_the_constructor(name: str) -> None:
    key = BAD_KEYS[name]
    with pytest.raises(ConfigurationError) as info:
        DefAPIGenerator(key)
    text = str(info.value)
    assert "\n" not in text and "cannot be sent in an HTTP header" in text
    assert "the DefAPI key" in text and info.value.hint
    assert leaks(text, key) == []
    with pytest.raises(ConfigurationError):
        DefAPIGenerator(f" {key.replace(chr(1), '')} ")  # surrounding whitespace


@pytest.mark.parametrize("name", list(BAD_KEYS))
def test_a_key_that_cannot_be_sent_is_refused_from_the_environment_and_dotenv(
    name: str, tmp_path: Path
) -> None:
    key = BAD_KEYS[name]
    with pytest.raises(ConfigurationError, match="DEFAPI_API_KEY") as info:
        Settings.from_env({"DEFAPI_API_KEY": key}, dotenv=False)
    assert "\n" not in str(info.value) and leaks(str(info.value), key) == []
    dotenv = tmp_path / "settings.env"
    dotenv.write_text(f'MOCK_AI=false\nDEFAPI_API_KEY="{key}"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="DEFAPI_API_KEY"):
        Settings.from_env({}, dotenv=dotenv)
    # Surrounding whitespace (a trailing newline from a secrets file) is dropped, not refused;
    # with MOCK_AI=true the key is not used, so it is not checked either.
    good = "sk-live-abcdefghijklmnop1234"
    assert Settings.from_env({"DEFAPI_API_KEY": f" {good}\n"}, dotenv=False).defapi_api_key == good
    assert Settings.from_env({"MOCK_AI": "true", "DEFAPI_API_KEY": key}, dotenv=False).use_mock


JOBQUEUE = str(Path(sys.executable).with_name("jobqueue"))


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBQUEUE_", "DEFAPI_")) and k != "MOCK_AI"
    }
    clean.update(COLUMNS="200", NO_COLOR="1", **env)
    return subprocess.run(
        [JOBQUEUE, "--database-url", f"sqlite:///{cwd / 'jobs.db'}", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("source", ["environment", "dotenv"])
def test_worker_and_check_name_an_unusable_key_in_one_line(source: str, tmp_path: Path) -> None:
    key = "sk-live-abcdéfghijklmnop\x01"
    env = {"DEFAPI_API_KEY": key} if source == "environment" else {}
    if source == "dotenv":
        (tmp_path / ".env").write_text(f'DEFAPI_API_KEY="{key}"\n', encoding="utf-8")

    worker = run_cli(tmp_path, "worker", **env)
    assert worker.returncode == 2, (worker.stdout, worker.stderr)
    lines = worker.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in worker.stderr, worker.stderr
    assert lines[0].startswith("Error: DEFAPI_API_KEY contains a non-ASCII character"), lines
    assert "cannot be sent in an HTTP header" in lines[0] and leaks(lines, key) == []

    # `check` reports every check; the generator's is the failing one, with its fix.
    checked = run_cli(tmp_path, "check", **env)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked
    (line,) = [ln for ln in checked.stdout.splitlines() if "generator" in ln]
    state, name, detail = line.split(None, 2)
    assert (state, name) == ("FAIL", "generator"), line
    assert detail.startswith("DEFAPI_API_KEY contains a non-ASCII character"), line
    assert leaks(checked.stdout + checked.stderr, key) == []


async def test_a_short_key_is_hidden_in_shorter_pieces(fake_defapi: FakeDefAPI) -> None:
    """For a key under 16 characters, 8 would be most of it: half the key counts (here 5)."""
    # Letters beyond f: no piece of the key can turn up by chance in a hex task id.
    fake_defapi.api_key = key = "sk-qrstuvw"
    fake_defapi.scenario("short", fail_reason=f"quota exceeded for {key[:5]} and {key[-6:]}")
    generator = defapi(fake_defapi)
    with pytest.raises(GenerationError) as failed:
        await generate_image(generator, "short")
    await generator.aclose()
    message = str(failed.value)
    assert key[:5] not in message and key[-6:] not in message, message
    assert "quota exceeded for **** and ****" in message
