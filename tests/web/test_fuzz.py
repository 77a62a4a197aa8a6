"""Hypothesis throws malformed requests at the real job API on loopback.

The rule for every request: the answer is never a 5xx; a refusal is a problem body
(``{"error": {"code", "message"}}``) and enqueues nothing; nothing is logged as an error;
every answer says ``nosniff``. The app runs under uvicorn in a thread of its own (with its
own event loop and `AsyncJobQueue`), on SQLite and PostgreSQL, and the requests go over a
real socket, so what the server's HTTP parser lets through is what the app must survive.
It runs in demo mode (owner cookies, the cross-site check) without a rate limit, and
requests may carry random ``Cookie``, ``Origin`` and ``Sec-Fetch-Site`` headers too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from jobqueue import AsyncJobQueue, migrate
from jobqueue.drivers.engines import make_engine
from jobqueue.web import create_app
from tests.web.server import running_server

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Api:
    def __init__(self, base: str, url: str, table: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=30)
        self.engine = make_engine(url)
        self.table = table
        self.errors = ErrorLog()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {self.table}")).scalar_one())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz')) / 'fuzz.db'}"
    else:
        url = request.getfixturevalue("jobqueue_postgres_url")
    table = f"fuzz_{uuid.uuid4().hex[:10]}"
    migrate(url, table=table)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        queue = AsyncJobQueue(url, table=table)
        try:
            app = create_app(queue, rate_limit=False, max_upload_bytes=4096, max_prompt_chars=300)
            async with running_server(app) as base:
                box["base"] = base
                started.set()
                await box["stop"].wait()
        finally:
            started.set()
            await queue.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="fuzz-server")
    thread.start()
    assert started.wait(30) and "base" in box, f"the server did not start: {box.get('error')!r}"
    fuzz = Api(box["base"], url, table)
    logging.getLogger().addHandler(fuzz.errors)
    try:
        yield fuzz
    finally:
        logging.getLogger().removeHandler(fuzz.errors)
        fuzz.client.close()
        fuzz.engine.dispose()
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


# -- strategies ----------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from(["prompt", "model", "images", "options", "n", "priority", ""])
json_bodies = st.dictionaries(fields, json_values, max_size=5).map(lambda d: json.dumps(d).encode())


def nested(depth: int) -> bytes:
    return b'{"prompt": "x", "options": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


def long_number(digits: int) -> bytes:
    return b'{"prompt": "x", "options": {"n": ' + b"9" * digits + b"}}"


hostile_bodies = (
    json_bodies
    | st.binary(max_size=300)
    | st.integers(1, 20_000).map(nested)
    | st.integers(1, 6000).map(long_number)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "text/plain",
        "",
        "application/x-www-form-urlencoded",
    ]
)
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
).map(lambda t: t.encode("latin-1").strip(b" \t"))  # raw bytes, as a client may send them
form_texts = st.text(max_size=60) | st.integers(1, 6000).map(lambda n: '{"n": ' + "9" * n + "}")


cookies = (
    header_text
    | st.uuids().map(lambda u: f"jobqueue_owner={u}".encode())
    | header_text.map(lambda t: b"a=" + t + b"; jobqueue_owner=" + t)
)
extra_headers = st.fixed_dictionaries(
    {},
    optional={
        "cookie": cookies,
        "origin": header_text | st.sampled_from([b"null", b"https://evil.example"]),
        "sec-fetch-site": header_text
        | st.sampled_from([b"same-origin", b"same-site", b"cross-site", b"none"]),
    },
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """(method, path, httpx keyword arguments) for one request."""
    method, path, kwargs = draw(bare_requests())
    extra = draw(extra_headers)
    if extra:
        kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **extra}}
    return method, path, kwargs


@st.composite
def bare_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    kind = draw(st.sampled_from(["json", "form", "list", "job", "cancel", "events", "image"]))
    if kind == "json":
        headers = {"content-type": draw(content_types)}
        if draw(st.booleans()):
            headers["idempotency-key"] = draw(header_text)
        body = draw(hostile_bodies)
        return "POST", "/jobs", {"content": body, "headers": headers}
    if kind == "form":
        data = draw(
            st.dictionaries(st.sampled_from(["prompt", "model", "options", "x"]), form_texts)
        )
        files = {}
        if draw(st.booleans()):
            files["image"] = ("i.png", draw(st.binary(max_size=64)), "image/png")
        return "POST", "/jobs", {"data": data, "files": files or {"image": ("", b"")}}
    if kind == "list":
        names = st.sampled_from(["limit", "status", "x"])
        params = draw(st.dictionaries(names, st.text(max_size=8)))
        return "GET", "/jobs", {"params": params}
    job_id = quote(draw(st.text(max_size=40) | st.uuids().map(str)), safe="")
    if kind == "job":
        return "GET", f"/jobs/{job_id}", {}
    if kind == "cancel":
        return "POST", f"/jobs/{job_id}/cancel", {}
    if kind == "events":
        return "GET", f"/jobs/{job_id}/events", {}
    return "GET", f"/mock-images/{job_id}.svg", {}


@SETTINGS
@given(request=requests())
@example(request=("GET", "/jobs", {"params": {"limit": "\u00b2"}}))
@example(request=("GET", "/jobs", {"params": {"limit": "9" * 5000}}))
@example(
    request=(
        "POST",
        "/jobs",
        {"content": nested(100_000)[:60_000], "headers": {"content-type": "application/json"}},
    )
)
@example(
    request=(
        "POST",
        "/jobs",
        {"content": nested(5000), "headers": {"content-type": "application/json"}},
    )
)
@example(
    request=(
        "POST",
        "/jobs",
        {"content": long_number(5000), "headers": {"content-type": "application/json"}},
    )
)
@example(
    request=(
        "POST",
        "/jobs",
        {
            "data": {"prompt": "x", "options": '{"n": ' + "9" * 5000 + "}"},
            "files": {"image": ("", b"")},
        },
    )
)
def test_no_request_makes_the_api_fail(api: Api, request: tuple[str, str, dict[str, Any]]) -> None:
    method, path, kwargs = request
    before, logged = api.count(), len(api.errors.records)
    if path.endswith("/events"):
        # An accepted stream runs until its job ends: look at the answer's head only.
        with api.client.stream(method, path, **kwargs) as r:
            status = r.status_code
            body = None if status == 200 else json.loads(r.read())
            headers = r.headers
    else:
        r = api.client.request(method, path, **kwargs)
        status, headers = r.status_code, r.headers
        body = r.json() if headers.get("content-type", "").startswith("application/json") else None
    assert status < 500, (status, body)
    assert headers.get("x-content-type-options") == "nosniff"
    if status >= 400:
        assert isinstance(body, dict) and body["error"]["code"] and body["error"]["message"]
        assert api.count() == before, f"a refused request ({status}) enqueued a job"
    messages = [rec.getMessage() for rec in api.errors.records[logged:]]
    assert not messages, messages
