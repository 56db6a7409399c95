"""The agent's hold on events taken while its tables are restored (streams/processor/restore_buffer.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.processor.restore_buffer import RestoreBuffer


def test_events_taken_during_a_restore_wait_and_then_go_first_in_order() -> None:
    held: RestoreBuffer[int] = RestoreBuffer()
    assert held.offer(1, restoring=False) == [1]
    assert held.offer(2, restoring=True) == [] and held.offer(3, restoring=True) == []
    assert held.release(restoring=True) == [] and len(held) == 2
    assert held.offer(4, restoring=False) == [2, 3, 4]  # the restore ended before 4 was taken
    assert len(held) == 0 and held.release(restoring=False) == []


def test_release_hands_the_held_events_over_once() -> None:
    held: RestoreBuffer[str] = RestoreBuffer()
    held.offer("a", restoring=True)
    assert held.release(restoring=False) == ["a"]
    assert held.release(restoring=False) == []


# each step: take an event (restoring or not), or look whether the restore ended (restoring or not)
steps = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60)


@given(steps)
def test_every_event_is_handled_once_in_the_order_taken_and_never_during_a_restore(plan: list) -> None:
    held: RestoreBuffer[int] = RestoreBuffer()
    handled: list[int] = []
    taken = 0
    for is_take, restoring in plan:
        out = held.offer(taken, restoring) if is_take else held.release(restoring)
        taken += is_take
        assert not (restoring and out), "handled while the tables are restored"
        handled += out
    handled += held.release(restoring=False)
    assert handled == list(range(taken))
