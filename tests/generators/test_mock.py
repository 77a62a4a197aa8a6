"""MockGenerator: deterministic URLs, stepped progress, saved remote task ids, seeded failures."""

from __future__ import annotations

import pytest

from jobqueue import ConfigurationError, GenerationError, LocalContext, MockGenerator
from jobqueue.generators import GenerationRequest


async def test_same_request_same_urls_across_instances() -> None:
    request = GenerationRequest(
        "a cat", "m1", ("https://x.invalid/a.png",), {"aspect_ratio": "1:1"}
    )
    first = await MockGenerator(delay=0).generate(request, LocalContext())
    second = await MockGenerator(delay=0, seed=99).generate(request, LocalContext())
    assert first.images == second.images
    assert first.images[0].startswith("https://mock.jobqueue.invalid/images/")
    assert first.cost == 0.0 and first.raw["mock"] is True


@pytest.mark.parametrize(
    "other",
    [
        GenerationRequest("a dog", "m1", ("https://x.invalid/a.png",), {"aspect_ratio": "1:1"}),
        GenerationRequest("a cat", "m2", ("https://x.invalid/a.png",), {"aspect_ratio": "1:1"}),
        GenerationRequest("a cat", "m1", (), {"aspect_ratio": "1:1"}),
        GenerationRequest("a cat", "m1", ("https://x.invalid/a.png",), {"aspect_ratio": "4:3"}),
    ],
)
def test_any_change_in_the_request_changes_the_url(other: GenerationRequest) -> None:
    base = GenerationRequest("a cat", "m1", ("https://x.invalid/a.png",), {"aspect_ratio": "1:1"})
    mock = MockGenerator(base_url="https://cdn.example.invalid/")
    assert mock.urls_for(base) != mock.urls_for(other)
    assert mock.urls_for(base)[0].startswith("https://cdn.example.invalid/")


async def test_option_n_asks_for_several_images() -> None:
    result = await MockGenerator(delay=0).generate(
        GenerationRequest("a cat", options={"n": 3}), LocalContext()
    )
    assert len(set(result.images)) == 3


async def test_progress_in_steps_and_task_id_saved_first() -> None:
    ctx = LocalContext()
    mock = MockGenerator(delay=0.05, steps=4)
    await mock.generate(GenerationRequest("steps"), ctx)
    assert [p for p, _ in ctx.progress] == [25, 50, 75, 100]
    assert ctx.progress[0][1] == "mock step 1/4"
    assert ctx.remote_task_id is not None and ctx.remote_task_id.startswith("mock-")
    assert (mock.submitted, mock.resumed) == (1, 0)


async def test_a_saved_task_is_resumed_not_submitted() -> None:
    ctx = LocalContext(remote_task_id="mock-from-an-earlier-attempt")
    mock = MockGenerator(delay=0)
    result = await mock.generate(GenerationRequest("again"), ctx)
    assert (mock.submitted, mock.resumed) == (0, 1)
    assert ctx.remote_task_id == "mock-from-an-earlier-attempt"
    assert result.raw["task_id"] == "mock-from-an-earlier-attempt"


async def test_failure_rate_one_always_fails() -> None:
    ctx = LocalContext()
    with pytest.raises(GenerationError, match="failed on purpose"):
        await MockGenerator(delay=0, steps=2, failure_rate=1.0).generate(
            GenerationRequest("doomed"), ctx
        )
    assert all(p < 100 for p, _ in ctx.progress)


async def outcomes(mock: MockGenerator, runs: int) -> list[bool]:
    results = []
    for i in range(runs):
        try:
            await mock.generate(GenerationRequest(f"p{i}"), LocalContext())
            results.append(True)
        except GenerationError:
            results.append(False)
    return results


async def test_seeded_failures_repeat_exactly() -> None:
    first = await outcomes(MockGenerator(delay=0, steps=1, failure_rate=0.5, seed=7), 30)
    second = await outcomes(MockGenerator(delay=0, steps=1, failure_rate=0.5, seed=7), 30)
    assert first == second
    assert True in first and False in first


@pytest.mark.parametrize(
    "kwargs",
    [{"delay": -1}, {"steps": 0}, {"steps": 1.5}, {"failure_rate": 1.5}, {"failure_rate": -0.1}],
)
def test_bad_settings_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        MockGenerator(**kwargs)  # type: ignore[arg-type]
