"""The processor's limit on dead-lettered events (streams/processor/rejects.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.processor.rejects import RejectLimit, TooManyRejects


def run(limit: RejectLimit, outcomes: list[bool]) -> int | None:
    """Feed outcomes (True: failed); the index at which the limit gave up, or None."""
    for i, failed in enumerate(outcomes):
        if not failed:
            limit.passed()
            continue
        try:
            limit.failed()
        except TooManyRejects:
            return i
    return None


def test_a_few_bad_records_never_stop_it():
    limit = RejectLimit(window=10, limit=2)
    assert run(limit, ([True] + [False] * 5) * 100) is None
    assert limit.recent == 1  # the last ten hold one


def test_it_stops_at_the_first_failure_over_the_limit():
    assert run(RejectLimit(window=10, limit=2), [True, True, False, True]) == 3
    assert run(RejectLimit(window=1000, limit=100), [True] * 500) == 100


def test_failures_older_than_the_window_no_longer_count():
    limit = RejectLimit(window=4, limit=1)
    assert run(limit, [True, False, False, False, True]) is None  # the first one is 4 events back: out
    assert run(RejectLimit(window=4, limit=1), [True, False, False, True]) == 3


def test_the_message_says_what_to_do():
    limit = RejectLimit(window=10, limit=0)
    with pytest.raises(TooManyRejects, match="fix the cause, then `enx-streams rebuild`"):
        limit.failed()


@pytest.mark.parametrize("window,limit", [(0, 0), (5, 5), (5, -1)])
def test_nonsense_limits_are_refused(window, limit):
    with pytest.raises(ValueError):
        RejectLimit(window=window, limit=limit)


@given(st.lists(st.booleans(), max_size=300), st.integers(1, 40), st.data())
def test_it_gives_up_exactly_when_a_window_holds_more_than_the_limit(outcomes, window, data):
    limit_n = data.draw(st.integers(0, window - 1))
    expected = next((i for i in range(len(outcomes))
                     if outcomes[i] and sum(outcomes[max(0, i - window + 1):i + 1]) > limit_n), None)
    limit = RejectLimit(window=window, limit=limit_n)
    assert run(limit, outcomes) == expected
    if expected is None:
        assert limit.recent == sum(outcomes[-window:])
