"""The record budget (streams/broker/limits.py): what fits, and a body limit no dead letter could hold."""

from __future__ import annotations

import pytest

from streams.broker import limits
from streams.config import Settings
from streams.ingest.service import StartRefused, create_app


def test_a_record_fits_up_to_the_topics_limit_with_its_overhead() -> None:
    room = limits.MAX_MESSAGE_BYTES - limits.RECORD_OVERHEAD_BYTES
    assert limits.fits(b"k", b"v" * (room - 1))
    assert not limits.fits(b"k", b"v" * room)
    assert limits.record_bytes(None, b"abc") == 3 + limits.RECORD_OVERHEAD_BYTES


def test_ingest_refuses_a_body_limit_whose_dead_letters_would_not_fit(tmp_path) -> None:
    assert limits.body_limit_problem(limits.MAX_BODY_BYTES) is None
    create_app(Settings(data_dir=tmp_path, max_body_bytes=limits.MAX_BODY_BYTES))  # the largest allowed
    with pytest.raises(StartRefused, match=f"set it to at most {limits.MAX_BODY_BYTES}"):
        create_app(Settings(data_dir=tmp_path / "b", max_body_bytes=limits.MAX_BODY_BYTES + 1))
