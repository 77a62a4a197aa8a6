"""A fake DefAPI: a real HTTP server on 127.0.0.1 that speaks DefAPI's task contract.

Tests point `DefAPIGenerator` (or a worker subprocess) at ``fake.url`` and steer the server
with `FakeDefAPI.scenario`, per prompt or as the default:

- normal: ``pending`` then ``in_progress`` for ``polls_before_success`` queries, then
  ``success`` with image URLs and ``consumed``;
- ``not_found_polls``: the first queries of a fresh task answer "not found" (HTTP 404, or
  HTTP 200 with ``code != 0`` when ``not_found_as_404=False``);
- ``submit_429`` / ``query_429`` (with ``retry_after``), ``submit_503`` (with
  ``retry_after_503``): refusals;
- ``submit_500``: the task IS created, then the answer is a 500 (accepted, answer lost);
  ``query_500``: failing queries;
- ``slow_submits`` / ``slow_queries``: answers that take ``slow_seconds`` (the submit still
  creates its task first), to trigger client timeouts;
- ``fail_reason``: the task ends ``failed``; ``submit_error``: HTTP 200 with ``code=1``;
- ``malformed_submit`` / ``malformed_queries``: bodies that are not JSON;
- ``hold``: the task stays ``in_progress`` until `FakeDefAPI.release`;
- ``echo`` (a text, usually the key or a piece of it) put where ``echo_in`` says, after
  ``echo_pad`` filler characters, as a careless provider would: in a submit's error answer
  (``submit_json``: a 400 with a JSON message; ``submit_text``: a 400 that is not JSON;
  ``submit_garbled``: a 200 that is not JSON; ``submit_envelope``: a 200 whose JSON is not
  the envelope; ``submit_503``: 503 refusals), in the task id (``task_id``), in the first
  query's status (``status``), or in the result: the image URL (``image``), the text
  (``text``), an extra field of the answer (``raw``).

``submit_gate``, a `threading.Event` when set on the server, holds every submit's answer
(the task already created) until the event is set, so a test can choose the moment the
client learns its task id.

A request without the right key gets a 401 whose message echoes the presented key, as some
providers do, so tests can check that the client scrubs it. The server counts accepted
submissions per prompt and records every Authorization header it saw.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

GOOGLE_PATH = "/api/image/gen"
OPENAI_PATH = "/api/gpt-image/gen"
QUERY_PATH = "/api/task/query"


@dataclass(frozen=True)
class Scenario:
    polls_before_success: int = 2
    not_found_polls: int = 0
    not_found_as_404: bool = True
    submit_429: int = 0
    query_429: int = 0
    retry_after: str | None = "1"
    submit_503: int = 0
    retry_after_503: str | None = None
    submit_500: int = 0
    query_500: int = 0
    slow_submits: int = 0
    slow_queries: int = 0
    slow_seconds: float = 1.0
    fail_reason: str | None = None
    submit_error: str | None = None
    malformed_submit: bool = False
    malformed_queries: int = 0
    hold: bool = False
    images: int = 1
    consumed: str = "0.04"
    #: What a task that ends ``failed`` reports it consumed (DefAPI may charge for those).
    failed_consumed: str = "0"
    echo: str = ""
    echo_in: str = ""
    echo_pad: int = 0

    @property
    def echoed(self) -> str:
        """The echo after its filler ('x' is in no test key)."""
        return "x" * self.echo_pad + self.echo


@dataclass
class Task:
    task_id: str
    prompt: str
    model: str
    body: dict[str, Any]
    scenario: Scenario
    queries: int = 0
    held: bool = False


@dataclass
class Counts:
    """Per-prompt counters of the scripted misbehaviour already served."""

    values: Counter[str] = field(default_factory=Counter)

    def take(self, name: str, limit: int) -> bool:
        """True (and count it) while fewer than ``limit`` of ``name`` were served."""
        if self.values[name] < limit:
            self.values[name] += 1
            return True
        return False


class _Server(ThreadingHTTPServer):
    # Many generations submit at once: with the default backlog of 5, connections beyond it
    # are only taken after TCP's retransmissions, a second or (seen) tens of seconds later.
    request_queue_size = 128


class FakeDefAPI:
    def __init__(self) -> None:
        self.api_key = f"sk-test-{secrets.token_hex(16)}"
        self.lock = threading.Lock()
        self.default = Scenario()
        self.scenarios: dict[str, Scenario] = {}
        self.counts: dict[str, Counts] = {}
        self.tasks: dict[str, Task] = {}
        self.submissions: Counter[str] = Counter()
        """Accepted submissions (tasks created) per prompt."""
        self.submit_requests: Counter[str] = Counter()
        """Every submit request that arrived with a valid key, per prompt."""
        self.auth_headers: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.submit_gate: threading.Event | None = None
        """When set here, submits are answered only once it is set (see the module)."""
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeDefAPI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # -- steering --------------------------------------------------------------------------

    def scenario(self, prompt: str | None = None, **changes: Any) -> None:
        """Set the behaviour for ``prompt`` (or the default for every other prompt)."""
        with self.lock:
            if prompt is None:
                self.default = replace(Scenario(), **changes)
            else:
                self.scenarios[prompt] = replace(Scenario(), **changes)

    def release(self) -> None:
        """Let every held task finish on its next query."""
        with self.lock:
            for task in self.tasks.values():
                task.held = False

    def tasks_for(self, prompt: str) -> list[Task]:
        with self.lock:
            return [t for t in self.tasks.values() if t.prompt == prompt]

    # -- the server ------------------------------------------------------------------------

    def _scenario_for(self, prompt: str) -> Scenario:
        return self.scenarios.get(prompt, self.default)

    def _counts_for(self, prompt: str) -> Counts:
        return self.counts.setdefault(prompt, Counts())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

            def do_POST(self) -> None:
                fake._serve(self, "POST")

            def do_GET(self) -> None:
                fake._serve(self, "GET")

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        try:
            status, headers, body, delay = self._answer(handler, method)
            gate = self.submit_gate
            if gate is not None and method == "POST":
                gate.wait(60)
            if delay:
                time.sleep(delay)
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to tell it

    def _answer(
        self, handler: BaseHTTPRequestHandler, method: str
    ) -> tuple[int, dict[str, str], Any, float]:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        auth = handler.headers.get("Authorization") or ""
        with self.lock:
            self.auth_headers.append(auth)
            self.requests.append((method, parts.path))
        if auth != f"Bearer {self.api_key}":
            presented = auth.removeprefix("Bearer ")
            return 401, {}, {"code": 401, "message": f"invalid api key: {presented}"}, 0.0
        if method == "POST" and parts.path in (GOOGLE_PATH, OPENAI_PATH):
            return self._submit(parts.path, json.loads(raw or b"{}"))
        if method == "GET" and parts.path == QUERY_PATH:
            task_id = (parse_qs(parts.query).get("task_id") or [""])[0]
            return self._query(task_id)
        return 404, {}, {"code": 404, "message": f"no route {method} {parts.path}"}, 0.0

    def _submit(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any, float]:
        prompt = str(body.get("prompt", ""))
        with self.lock:
            sc = self._scenario_for(prompt)
            counts = self._counts_for(prompt)
            self.submit_requests[prompt] += 1
            if counts.take("submit_429", sc.submit_429):
                headers = {"Retry-After": sc.retry_after} if sc.retry_after else {}
                return 429, headers, {"code": 429, "message": "rate limited, slow down"}, 0.0
            if counts.take("submit_503", sc.submit_503):
                headers = {"Retry-After": sc.retry_after_503} if sc.retry_after_503 else {}
                return 503, headers, {"code": 503, "message": "service unavailable"}, 0.0
            echoed = self._submit_echo(sc)
            if echoed is not None:
                return echoed
            if sc.submit_error is not None:
                return 200, {}, {"code": 1, "message": sc.submit_error}, 0.0
            model = str(body.get("model", ""))
            wrong_endpoint = (path == OPENAI_PATH) != model.startswith(("openai/", "gpt-"))
            if wrong_endpoint:
                message = f"model {model} is not served at {path}"
                return 400, {}, {"code": 400, "message": message}, 0.0
            task_id = f"task-{secrets.token_hex(8)}"
            if sc.echo_in == "task_id":
                task_id = f"task-{sc.echoed}"
            self.tasks[task_id] = Task(task_id, prompt, model, body, sc, held=sc.hold)
            self.submissions[prompt] += 1
            envelope = {"code": 0, "message": "ok", "data": {"task_id": task_id}}
            if counts.take("submit_500", sc.submit_500):
                return 500, {}, {"code": 500, "message": "internal error"}, 0.0
            if sc.malformed_submit:
                return 200, {}, b'{"code": 0, "data": {"task_id": ', 0.0
            delay = sc.slow_seconds if counts.take("slow_submits", sc.slow_submits) else 0.0
            return 200, {}, envelope, delay

    def _query(self, task_id: str) -> tuple[int, dict[str, str], Any, float]:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return 404, {}, {"code": 404, "message": f"task not found: {task_id}"}, 0.0
            sc = task.scenario
            counts = self._counts_for(task.prompt)
            if counts.take("query_429", sc.query_429):
                headers = {"Retry-After": sc.retry_after} if sc.retry_after else {}
                return 429, headers, {"code": 429, "message": "rate limited"}, 0.0
            if counts.take("query_500", sc.query_500):
                return 500, {}, {"code": 500, "message": "upstream exploded"}, 0.0
            if counts.take("malformed_queries", sc.malformed_queries):
                return 200, {}, b"<html>502 Bad Gateway</html>", 0.0
            delay = sc.slow_seconds if counts.take("slow_queries", sc.slow_queries) else 0.0
            if counts.take("not_found", sc.not_found_polls):
                if sc.not_found_as_404:
                    return 404, {}, {"code": 404, "message": "task not found"}, delay
                return 200, {}, {"code": 1, "message": "Task not found", "data": None}, delay
            task.queries += 1
            data: dict[str, Any] = {
                "task_id": task_id,
                "status_reason": {"message": None},
                "consumed": "0",
                "result": None,
            }
            if sc.echo_in == "status" and task.queries == 1:
                data["status"] = f"throttled for {sc.echoed}"
            elif task.held or task.queries <= sc.polls_before_success:
                data["status"] = "pending" if task.queries <= 1 else "in_progress"
            elif sc.fail_reason is not None:
                data["status"] = "failed"
                data["status_reason"] = {"message": sc.fail_reason}
                data["consumed"] = sc.failed_consumed
            else:
                data["status"] = "success"
                data["consumed"] = sc.consumed
                data["result"] = [
                    {"image": f"https://cdn.fake-defapi.invalid/{task_id}/{i}.png"}
                    for i in range(sc.images)
                ]
                if sc.echo_in == "image":
                    data["result"][0]["image"] += f"?token={sc.echoed}"
                elif sc.echo_in == "text":
                    data["result"].append({"text": f"generated for {sc.echoed}"})
                elif sc.echo_in == "raw":
                    data["debug"] = {"authorization": f"Bearer {sc.echoed}"}
            return 200, {}, {"code": 0, "message": "ok", "data": data}, delay

    @staticmethod
    def _submit_echo(sc: Scenario) -> tuple[int, dict[str, str], Any, float] | None:
        """A submit's answer that echoes ``sc.echo``, or None to go on normally."""
        text = sc.echoed
        if sc.echo_in == "submit_json":
            return 400, {}, {"code": 400, "message": f"{text} is not allowed here"}, 0.0
        if sc.echo_in == "submit_text":
            return 400, {}, f"<html>{text} rejected</html>".encode(), 0.0
        if sc.echo_in == "submit_garbled":
            return 200, {}, f"{text} <html>".encode(), 0.0
        if sc.echo_in == "submit_envelope":
            return 200, {}, {"detail": text}, 0.0
        if sc.echo_in == "submit_503":
            return 503, {}, {"code": 503, "message": f"overloaded ({text})"}, 0.0
        return None


@pytest.fixture
def fake_defapi() -> Iterator[FakeDefAPI]:
    """A running fake DefAPI on 127.0.0.1 (a random port), stopped after the test."""
    fake = FakeDefAPI().start()
    try:
        yield fake
    finally:
        fake.stop()
