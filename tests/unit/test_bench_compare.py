"""The bench's comparison of two sets of final session states (bench/processor.py: the processor's against the
Quix peer's): equal says nothing, any difference is named."""

from __future__ import annotations

from bench.processor import differences
from streams.processor import rules


def state(conf: str, **changed: object) -> dict:
    return {**rules.empty("bench", conf), **changed}


def test_equal_states_have_no_differences() -> None:
    ours = {b"bench/s1": state("s1"), b"bench/s2": None}
    assert differences(ours, {k: (dict(v) if v else v) for k, v in ours.items()}) == []


def test_a_session_missing_on_either_side_is_named() -> None:
    out = differences({b"bench/s1": state("s1"), b"bench/s2": state("s2")}, {b"bench/s1": state("s1"),
                                                                               b"bench/s3": state("s3")})
    assert out == ["1 sessions only in the first, e.g. [b'bench/s2']", "1 sessions only in the second, e.g. [b'bench/s3']"]


def test_a_differing_field_is_named_with_both_values() -> None:
    out = differences({b"bench/s1": state("s1", sla_state="met")}, {b"bench/s1": state("s1", sla_state="pending")})
    assert out == ["b'bench/s1': sla_state 'met' != 'pending'"]


def test_many_differences_are_counted_beyond_those_shown() -> None:
    ours = {f"bench/s{i}".encode(): state(f"s{i}", version=1) for i in range(5)}
    theirs = {k: {**v, "version": 2} for k, v in ours.items()}
    out = differences(ours, theirs, show=2)
    assert len(out) == 3 and out[-1] == "... 5 sessions differ"
