"""Noticing records the agent never received (streams/processor/gaps.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.processor.gaps import Continuity


def test_in_order_redelivery_and_holes() -> None:
    c = Continuity()
    assert c.missing(0, 10) == range(0)  # first record, start unknown: taken as the start
    assert c.missing(0, 11) == range(0)
    assert c.missing(0, 5) == range(0)  # a re-delivery after a seek back: already processed
    assert c.missing(0, 12) == range(0)
    assert c.missing(0, 20) == range(13, 20)  # a hole
    assert c.missing(1, 3, start=0) == range(0, 3)  # the first record after an assignment, past the start
    assert c.missing(2, 7, start=7) == range(0)
    assert c.knows(0) and not c.knows(3)  # the start matters only where nothing was received yet
    c.forget([0])
    assert not c.knows(0)
    assert c.missing(0, 30, start=21) == range(21, 30)


@given(st.lists(st.integers(0, 200), max_size=60), st.integers(0, 50))
def test_every_offset_is_either_received_or_reported_missing(received: list[int], start: int) -> None:
    """Whatever order records come in, the offsets from the start up to the highest received are each
    received or reported missing before anything beyond them is taken (the agent fills them there)."""
    c = Continuity()
    covered: set[int] = set()
    for offset in received:
        holes = c.missing(0, offset, start=start)
        assert all(start <= h < offset for h in holes)
        covered |= set(holes)
        if offset >= start:
            covered.add(offset)
    top = max([o for o in received if o >= start], default=None)
    if top is not None:
        assert set(range(start, top + 1)) <= covered
