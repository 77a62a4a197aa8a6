"""Provider API keys: refuse one that cannot be sent, and keep it out of what is stored or logged.

A provider may echo the key back: "invalid key sk-…" in an error body, a signed image URL,
a debug field in its answer, a gateway's HTML page cut short. Whatever a generator returns or
raises ends up in a job's ``error``, ``errors``, ``result``, ``result_url`` or
``progress_message`` (which the job's owner may read) and in the worker's log lines, so the
key must be gone before that.

`Scrubber` hides a key wherever it appears, whole or in part: every run of
`run_length` consecutive characters of it (8 for keys of 16 characters or more), also
percent-encoded or JSON-escaped, is replaced by ``****``. Matching pieces, not only the
whole key, is what makes a truncated echo safe; and everything is scrubbed *before* it is cut
short (`Scrubber.cut`), so a cut never splits the key into a piece that is still readable.

`Scrubber.run` is the one place a generation is scrubbed: the result (image URLs, text,
``raw``), the exception it raises (message, attributes, notes and every chained cause), the
progress messages it writes and the task ids it saves. `DefAPIGenerator` runs its
generations through it; `ScrubbedGenerator` gives any other generator the same.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from ..errors import (
    ConfigurationError,
    GenerationError,
    JobQueueError,
    PayloadError,
    describe_error,
)
from .base import (
    GenerationRequest,
    GenerationResult,
    Generator,
    JobContext,
    OldContextNames,
    job_context,
)

MASK = "****"
"""What a hidden piece of a key is replaced with."""

MIN_RUN = 8
"""Consecutive characters of a key that count as a leak (fewer for keys under 16 characters)."""

T = TypeVar("T")


def run_length(secret: str) -> int:
    """How many consecutive characters of ``secret`` are hidden wherever they appear.

    `MIN_RUN` for a key of 16 characters or more. For a shorter key a run of 8 would leave
    too little unseen (7 characters of a 10-character key give most of it away), so half
    the key counts, but at least 4 characters: fewer would hide harmless text that merely
    happens to share them. A key of 4 characters or fewer is hidden only whole.
    """
    if len(secret) <= 4:
        return len(secret)
    return max(4, min(MIN_RUN, (len(secret) + 1) // 2))


def _forms(secret: str) -> set[str]:
    """The key as it may be echoed: as is, percent-encoded (either hex case), JSON-escaped
    (also with ``\\/``, as some encoders write a slash)."""
    encoded = quote(secret, safe="")
    escaped = json.dumps(secret)[1:-1]
    forms = {secret, encoded, _lower_hex(encoded), escaped, escaped.replace("/", "\\/")}
    return {form for form in forms if form}


def _lower_hex(encoded: str) -> str:
    parts = encoded.split("%")
    return parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:])


class Scrubber:
    """Hides secrets (API keys) in text, JSON-like values, results and exceptions.

    ``Scrubber(key)``; empty or None secrets are ignored, so ``Scrubber(None)`` scrubs
    nothing. The secrets themselves are never shown by ``repr``.
    """

    __slots__ = ("_pieces", "_shortest")

    def __init__(self, *secrets: str | None) -> None:
        pieces: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            run = run_length(secret)
            for form in _forms(secret):
                size = min(run, len(form))
                pieces.update(form[i : i + size] for i in range(len(form) - size + 1))
        # Longest first only to make the search order stable; overlaps are merged anyway.
        self._pieces = tuple(sorted(pieces, key=lambda p: (-len(p), p)))
        self._shortest = min((len(p) for p in self._pieces), default=0)

    def __repr__(self) -> str:
        return f"Scrubber({'no secrets' if not self._pieces else 'secrets hidden'})"

    # -- text and values -----------------------------------------------------------------------

    def text(self, text: str) -> str:
        """``text`` with every run of a secret's characters (`run_length` or more) masked.

        Overlapping and touching pieces are merged, so a key appears as one ``****``.
        """
        if not self._pieces or len(text) < self._shortest:
            return text
        spans: list[tuple[int, int]] = []
        for piece in self._pieces:
            start = text.find(piece)
            while start != -1:
                spans.append((start, start + len(piece)))
                start = text.find(piece, start + 1)
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        done = 0
        begin, end = spans[0]
        for s, e in spans[1:]:
            if s <= end:
                end = max(end, e)
                continue
            out.append(text[done:begin] + MASK)
            done, begin, end = end, s, e
        out.append(text[done:begin] + MASK)
        out.append(text[end:])
        return "".join(out)

    def cut(self, text: str, limit: int) -> str:
        """``text`` scrubbed, then cut to ``limit`` characters: in this order, so that a cut
        through the key cannot leave a piece too short to be recognised."""
        return self.text(text)[:limit]

    def value(self, value: T) -> T:
        """A JSON-like value with every string in it (keys too) scrubbed; lists and tuples
        keep their type, mappings become dicts, other values are returned as they are."""
        scrubbed: Any
        if isinstance(value, str):
            scrubbed = self.text(value)
        elif isinstance(value, Mapping):
            scrubbed = {
                self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()
            }
        elif isinstance(value, list):
            scrubbed = [self.value(v) for v in value]
        elif isinstance(value, tuple):
            scrubbed = tuple(self.value(v) for v in value)
        else:
            scrubbed = value
        return scrubbed  # type: ignore[no-any-return]

    def __call__(self, value: T) -> T:
        """Same as `value`: ``scrub(anything)``."""
        return self.value(value)

    def holds_secret(self, text: str) -> bool:
        """Whether ``text`` contains a run of a secret that `text` would mask."""
        return self.text(text) != text

    def result(self, result: GenerationResult) -> GenerationResult:
        """``result`` with its image URLs, text and ``raw`` answer scrubbed."""
        return GenerationResult(
            images=tuple(self.text(url) for url in result.images),
            text=None if result.text is None else self.text(result.text),
            cost=result.cost,
            raw=self.value(result.raw),
            cost_unit=result.cost_unit,
        )

    # -- exceptions ----------------------------------------------------------------------------

    def exception(self, exc: BaseException) -> BaseException:
        """``exc`` with the secrets gone from its message, its attributes and notes, and from
        every exception chained to it (``__cause__``, ``__context__``, group members).

        Done in place, so the exception keeps its type (and what the worker reads from it,
        such as ``retryable``). A chained exception whose text still holds a secret after
        that (its ``__str__`` reads something we cannot reach) is cut from the chain; if
        ``exc`` itself is such an exception, a `ScrubbedError` retelling it is returned.
        """
        if self._scrub_in_place(exc, set()):
            return exc
        retryable = not isinstance(exc, PayloadError) and getattr(exc, "retryable", True) is True
        lines = _text_of(exc).strip().splitlines()
        first = self.text(lines[0].strip()) if lines else ""
        name = type(exc).__name__
        return ScrubbedError(f"{name}: {first}" if first else name, retryable=retryable)

    def describe(self, exc: BaseException) -> str:
        """`describe_error` of ``exc`` scrubbed first (the description is cut short)."""
        return describe_error(self.exception(exc))

    def _scrub_in_place(self, exc: BaseException, seen: set[int]) -> bool:
        """Scrub ``exc`` and its chain; whether ``str(exc)`` is free of secrets afterwards."""
        if id(exc) in seen:
            return True
        seen.add(id(exc))
        # Only what changed is replaced (a mapping attribute would come back a dict); an
        # exception that refuses the new value is left to the final check below.
        with contextlib.suppress(Exception):
            args = self.value(exc.args)
            if args != exc.args:
                exc.args = args
        for name, attribute in list(getattr(exc, "__dict__", {}).items()):
            if isinstance(attribute, str | list | tuple | Mapping):
                with contextlib.suppress(Exception):
                    scrubbed = self.value(attribute)
                    if scrubbed != attribute:
                        setattr(exc, name, scrubbed)
        clean = True
        if isinstance(exc, BaseExceptionGroup):
            for member in exc.exceptions:
                clean = self._scrub_in_place(member, seen) and clean
        cause, context = exc.__cause__, exc.__context__
        if cause is not None and not self._scrub_in_place(cause, seen):
            exc.__cause__ = None
        if context is not None and not self._scrub_in_place(context, seen):
            exc.__context__ = None
        return clean and not self.holds_secret(_text_of(exc))

    # -- generations ---------------------------------------------------------------------------

    def context(self, context: JobContext) -> JobContext:
        """``context`` with progress messages scrubbed and task ids holding a secret refused."""
        return _ScrubbedContext(job_context(context), self)

    async def run(
        self,
        generate: Callable[[GenerationRequest, JobContext], Awaitable[GenerationResult]],
        request: GenerationRequest,
        context: JobContext,
    ) -> GenerationResult:
        """``await generate(request, context)`` with everything it hands on scrubbed: its
        result, the exception it raises, its progress messages and saved task ids."""
        failure: BaseException
        try:
            result = await generate(request, self.context(context))
        except (Exception, SystemExit) as exc:  # the worker records SystemExit too
            scrubbed = self.exception(exc)
            if scrubbed is exc:
                raise
            failure = scrubbed
        else:
            if isinstance(result, GenerationResult):
                return self.result(result)
            return self.value(result)  # a generator that broke the protocol: still scrubbed
        # Raised outside the except block, so the original does not ride along as __context__.
        raise failure from None


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return ""  # unreadable: describe_error and tracebacks show a placeholder instead


class ScrubbedError(JobQueueError):
    """An exception whose message held a secret that could not be removed in place, retold
    without it (``Type: message``, scrubbed)."""

    hint = "the original error's message held the API key; it was hidden"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class _ScrubbedContext(OldContextNames):
    """A `JobContext` that scrubs what a generator writes to its job through it."""

    def __init__(self, inner: JobContext, scrubber: Scrubber) -> None:
        self._inner = inner
        self._scrubber = scrubber

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        text = None if message is None else self._scrubber.text(message)
        await self._inner.report_progress(percent, text)

    async def save_remote_task_id(self, task_id: str) -> None:
        # A task id is needed as it is to resume the task, so it cannot be masked; one that
        # holds the key is not saved (the job's row may be read by its owner) at all.
        if self._scrubber.holds_secret(task_id):
            raise GenerationError(
                "the provider's task id holds part of the API key; it was not saved on the job",
                retryable=False,
                hint="report this to the provider: a task id must not contain the key",
            )
        await self._inner.save_remote_task_id(task_id)

    @property
    def remote_task_id(self) -> str | None:
        return self._inner.remote_task_id

    def __getattr__(self, name: str) -> Any:
        # The rest of the worker's context (``cancelled``, ``job``, ``run_in_loop``). Our own
        # and special names are not forwarded: before __init__ (a copy) that would recurse.
        if name.startswith("__") or name in ("_inner", "_scrubber"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class ScrubbedGenerator:
    """Any `Generator`, with the given secrets scrubbed from everything it returns, raises
    or writes to its job (see `Scrubber.run`). ``ScrubbedGenerator(MyProvider(key), key)``.

    What the wrapped generator logs itself it must scrub itself (``scrubber(value)``).
    """

    def __init__(self, generator: Generator, *secrets: str | None) -> None:
        self.generator = generator
        self.name = generator.name
        self.scrubber = Scrubber(*secrets)

    def __repr__(self) -> str:
        return f"ScrubbedGenerator({self.generator!r})"

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        return await self.scrubber.run(self.generator.generate, request, context)

    async def aclose(self) -> None:
        await self.generator.aclose()


def check_api_key(key: str, *, name: str, hint: str) -> None:
    """Refuse a key that cannot be sent in an HTTP header (``Authorization: Bearer <key>``).

    Control characters and line breaks would be refused by the HTTP client at the first
    request (or, worse, end the header early), non-ASCII characters cannot be encoded, and
    whitespace cannot be part of a bearer token. The `ConfigurationError` names the problem
    and its position, never the key.
    """
    if key != key.strip():
        raise ConfigurationError(
            f"{name} starts or ends with whitespace: it cannot be sent in an HTTP header",
            hint=hint,
        )
    for position, char in enumerate(key, start=1):
        code = ord(char)
        if code < 0x20 or code == 0x7F:
            what = f"a control character (U+{code:04X})"
        elif code > 0x7E:
            what = f"a non-ASCII character (U+{code:04X})"
        elif char == " ":
            what = "a space"
        else:
            continue
        raise ConfigurationError(
            f"{name} contains {what} at position {position}: it cannot be sent in an HTTP header",
            hint=hint,
        )


__all__ = [
    "MASK",
    "MIN_RUN",
    "ScrubbedError",
    "ScrubbedGenerator",
    "Scrubber",
    "check_api_key",
    "run_length",
]


def mask_key(key: str | None) -> str:
    """A key shown safely: ``****`` and, for keys long enough to stay secret, the last 4."""
    if not key:
        return "(none)"
    return f"****{key[-4:]}" if len(key) >= 12 else "****"
