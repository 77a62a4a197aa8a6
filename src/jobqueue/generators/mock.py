"""`MockGenerator`: a stand-in for a real image provider, for tests, demos and ``MOCK_AI=true``.

It behaves like a slow remote provider without the network or the bill: it "submits" a task
(and saves its id on the job, as a real generator must), reports progress in steps while
it "waits", and returns image URLs that depend only on the request. Failures happen at a
configured rate drawn from a seeded random generator, so a test that asks for them gets the
same sequence on every run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from decimal import Decimal
from typing import Any

from ..errors import ConfigurationError, GenerationError
from .base import GenerationRequest, GenerationResult, JobContext, job_context

logger = logging.getLogger(__name__)

DEFAULT_MOCK_BASE_URL = "https://mock.jobqueue.invalid/images"
MAX_MOCK_IMAGES = 10


def request_fingerprint(request: GenerationRequest) -> str:
    """A stable hex digest of what was asked (prompt, model, images, options).

    The same request always maps to the same digest, in this process and the next, which is
    what makes the mock's URLs deterministic.
    """
    canonical = json.dumps(
        {
            "prompt": request.prompt,
            "model": request.model,
            "images": list(request.images),
            "options": dict(request.options),
        },
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class MockGenerator:
    """A deterministic, configurable fake image generator.

    ``delay`` seconds are spread over ``steps`` progress reports; ``failure_rate`` (0 to 1)
    of the generations end in `GenerationError`, decided by a ``seed``-ed random generator.
    ``submitted`` and ``resumed`` count fresh submissions and resumed tasks, so tests can
    check that a retried job polls its saved task instead of submitting again. ``cost``
    (an exact amount in ``cost_unit``) is what each generation reports it cost, failed
    ones included, as a provider that charges for a task that then fails.
    """

    name = "mock"

    def __init__(
        self,
        delay: float = 2.0,
        steps: int = 5,
        failure_rate: float = 0.0,
        seed: int | None = None,
        base_url: str = DEFAULT_MOCK_BASE_URL,
        cost: Decimal | int | str = 0,
        cost_unit: str = "credits",
    ) -> None:
        if not delay >= 0:
            raise ConfigurationError(f"MockGenerator delay must be >= 0 seconds, not {delay!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigurationError(f"MockGenerator steps must be an integer >= 1, not {steps!r}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ConfigurationError(
                f"MockGenerator failure_rate must be between 0 and 1, not {failure_rate!r}"
            )
        try:
            self.cost = Decimal(str(cost))
        except ArithmeticError:
            raise ConfigurationError(
                f"MockGenerator cost must be a decimal amount, not {cost!r}"
            ) from None
        if not self.cost.is_finite() or self.cost < 0:
            raise ConfigurationError(f"MockGenerator cost must be 0 or more, not {cost!r}")
        self.cost_unit = cost_unit
        self.delay = float(delay)
        self.steps = steps
        self.failure_rate = float(failure_rate)
        self.seed = seed
        self.base_url = base_url.rstrip("/")
        self._rng = random.Random(seed)
        self.submitted = 0
        self.resumed = 0

    def __repr__(self) -> str:
        return (
            f"MockGenerator(delay={self.delay:g}, steps={self.steps}, "
            f"failure_rate={self.failure_rate:g}, seed={self.seed!r})"
        )

    def urls_for(self, request: GenerationRequest) -> tuple[str, ...]:
        """The image URLs this generator returns for ``request`` (always the same)."""
        digest = request_fingerprint(request)
        count = _image_count(request.options)
        if count == 1:
            return (f"{self.base_url}/{digest[:32]}.png",)
        return tuple(f"{self.base_url}/{digest[:32]}-{i}.png" for i in range(1, count + 1))

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        """Pretend to submit, wait with progress, then succeed or fail."""
        digest = request_fingerprint(request)
        context = job_context(context)
        task_id = context.remote_task_id
        if task_id is None:
            self.submitted += 1
            task_id = f"mock-{digest[:20]}"
            # Like a real provider: the task id is on the job before any waiting starts.
            await context.save_remote_task_id(task_id)
            logger.debug("mock task %s submitted", task_id)
        else:
            self.resumed += 1
            logger.info("resuming mock task %s", task_id)
        # Draw before waiting, so the outcome does not depend on how the waits interleave.
        fails = self._rng.random() < self.failure_rate
        pause = self.delay / self.steps
        for step in range(1, self.steps + 1):
            if pause:
                await asyncio.sleep(pause)
            percent = min(99, step * 100 // self.steps) if fails else step * 100 // self.steps
            await context.report_progress(percent, f"mock step {step}/{self.steps}")
        if fails:
            raise GenerationError(
                f"mock generation failed on purpose (failure_rate={self.failure_rate:g})",
                hint="the mock fails at its configured rate; set failure_rate=0 to stop that",
                cost=self.cost,
                cost_unit=self.cost_unit,
            )
        raw: dict[str, Any] = {"task_id": task_id, "status": "success", "mock": True}
        return GenerationResult(
            images=self.urls_for(request),
            text=None,
            cost=self.cost,
            raw=raw,
            cost_unit=self.cost_unit,
        )

    async def aclose(self) -> None:
        """Nothing to release: the mock holds no connections."""


def _image_count(options: Any) -> int:
    """How many images were asked for (option ``n``), within 1..MAX_MOCK_IMAGES."""
    n = options.get("n", 1) if hasattr(options, "get") else 1
    if isinstance(n, bool) or not isinstance(n, int):
        return 1
    return max(1, min(MAX_MOCK_IMAGES, n))
