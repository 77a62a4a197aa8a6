"""Input checks (`jobqueue.validation`); what the queue refuses, end to end on both
databases, is in tests/queue/test_queue.py."""

from __future__ import annotations

from jobqueue.validation import QueueLimits, check_json


def test_check_json_returns_the_text_that_is_stored() -> None:
    """`check_json` returns the JSON text it checked, so a payload or result is encoded once
    (the statements write that text; its round trip through every write is in
    tests/queue/test_queue.py)."""
    assert check_json({"prompt": "ein Bär", "n": [1, 2.5]}, "payload", QueueLimits()) == (
        '{"prompt": "ein Bär", "n": [1, 2.5]}'
    )
