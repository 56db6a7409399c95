"""The spool file: frames in order, read forward from the marker in batches, torn tails cut, and an
emptying that a crash can never turn into skipped frames."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from streams.ingest import spool as S
from streams.ingest.spool import Spool, encode_frame, read_frames


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        out = super().read(n)
        self.read_bytes += len(out)
        return out


def fill(spool: Spool, n: int, size: int = 100) -> list[bytes]:
    values = [f"{i:06d}".encode() * (size // 6) for i in range(n)]
    for v in values:
        spool.append("t", b"k", v)
    return values


def drain(spool: Spool, batch: int) -> list[bytes]:
    got: list[bytes] = []
    while spool.pending_bytes():
        frames = spool.pending(batch)
        assert frames, "pending bytes but no frame"
        for f in frames:
            got.append(f.value)
            spool.ack(f.end)
    return got


def test_a_batch_reads_only_its_own_frames() -> None:
    frames = [encode_frame("t", b"k", bytes([i]) * 1000) for i in range(200)]
    data = b"".join(frames)
    start = sum(len(f) for f in frames[:150])
    reader = CountingReader(data)
    got, end = read_frames(reader, start, 10)
    assert [f.value[0] for f in got] == list(range(150, 160))
    assert end == start + sum(len(f) for f in frames[150:160]) == got[-1].end
    assert reader.read_bytes == end - start  # not the 150 frames before the marker, not the 40 after the batch


def test_draining_in_batches_gives_every_frame_once_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 1234)
    assert drain(spool, 500) == values
    assert spool.reset_if_drained() and spool.size() == 0 and spool.acked() == 0
    more = fill(spool, 3)
    assert drain(spool, 500) == more
    spool.close()


def test_a_torn_last_frame_is_cut_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 5)
    spool.ack(spool.pending(2)[-1].end)
    spool.close()
    with open(tmp_path / "spool.log", "ab") as f:
        f.write(encode_frame("t", b"k", b"half written")[:-3])
    reopened = Spool(tmp_path)
    assert [f.value for f in reopened.pending()] == values[2:]
    reopened.append("t", b"k", b"after")
    assert [f.value for f in reopened.pending()][-1] == b"after"
    reopened.close()


def test_a_crash_while_emptying_resends_and_never_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 4)
    drain(spool, 500)

    def crash(fd: int, length: int) -> None:
        raise OSError("killed before the truncation")

    monkeypatch.setattr(S.os, "ftruncate", crash)
    with pytest.raises(OSError):
        spool.reset_if_drained()
    monkeypatch.undo()
    spool.close()
    restarted = Spool(tmp_path)  # the marker went back to 0 first: everything is offered again
    assert [f.value for f in restarted.pending()] == values
    restarted.close()


def test_a_marker_past_the_end_reads_as_zero_and_is_written_so(tmp_path: Path) -> None:
    """A spool emptied in the old order (truncate, then crash before the marker): frames appended after the
    restart must not hide behind the stale marker, in this run or, after a second kill before anything was
    acknowledged, in the next (found by tests/faults/test_spool_crash.py: the stale marker stayed on disk)."""
    spool = Spool(tmp_path)
    fill(spool, 3)
    spool.close()
    (tmp_path / "spool.acked").write_text(str(os.path.getsize(tmp_path / "spool.log")))
    os.truncate(tmp_path / "spool.log", 0)
    restarted = Spool(tmp_path)
    assert restarted.acked() == 0 and (tmp_path / "spool.acked").read_text() == "0"
    restarted.append("t", None, b"new")
    assert [f.value for f in restarted.pending()] == [b"new"]
    values = fill(restarted, 5)  # Kafka still away: past where the stale marker pointed, nothing acknowledged
    restarted.close()  # killed
    again = Spool(tmp_path)
    assert [f.value for f in again.pending()] == [b"new", *values]
    again.close()


def test_a_marker_inside_a_frame_goes_back_to_its_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 3)
    second_end = spool.pending()[1].end
    spool.close()
    (tmp_path / "spool.acked").write_text(str(second_end - 5))  # inside the second frame
    restarted = Spool(tmp_path)
    assert [f.value for f in restarted.pending()] == values[1:]  # the second again, the third: nothing skipped
    restarted.close()


def test_frames_are_counted_across_appends_acks_and_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.pending_frames() == 0 and spool.oldest() is None
    values = fill(spool, 5)
    assert spool.pending_frames() == 5 and spool.oldest().value == values[0]
    first, second = spool.pending(2)
    spool.ack(first.end)
    spool.ack(second.end)
    assert spool.pending_frames() == 3 and spool.oldest().value == values[2]
    spool.close()
    restarted = Spool(tmp_path)
    assert restarted.pending_frames() == 3
    drain(restarted, 2)
    assert restarted.pending_frames() == 0 and restarted.oldest() is None
    restarted.close()


def test_a_corrupt_frame_in_the_middle_keeps_the_frames_after_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 6)
    frames = spool.pending()
    spool.ack(frames[0].end)  # the first is in Kafka already
    spool.close()
    data = bytearray((tmp_path / "spool.log").read_bytes())
    data[frames[2].end - 10] ^= 0xFF  # a bad block inside the third frame
    (tmp_path / "spool.log").write_bytes(bytes(data))

    reopened = Spool(tmp_path)
    assert [f.value for f in reopened.pending()] == [values[1], *values[3:]]  # only the corrupt one is gone
    assert reopened.pending_frames() == 4
    (moved,) = (tmp_path / "quarantine").iterdir()
    assert moved.read_bytes() == bytes(data[frames[1].end:frames[2].end])  # kept whole, for a post-mortem
    reopened.append("t", b"k", b"after")
    assert drain(reopened, 500) == [values[1], *values[3:], b"after"]
    reopened.close()


def test_a_corrupt_frame_then_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 4)
    frames = spool.pending()
    spool.close()
    data = bytearray((tmp_path / "spool.log").read_bytes())
    data[frames[1].end - 3] ^= 0x01
    data += encode_frame("t", b"k", b"torn")[:-2]
    (tmp_path / "spool.log").write_bytes(bytes(data))
    reopened = Spool(tmp_path)
    assert [f.value for f in reopened.pending()] == [values[0], *values[2:]]
    reopened.close()


def test_a_failed_append_leaves_no_torn_frame_in_front_of_later_ones(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    fill(spool, 2)
    size = spool.size()
    real_write = S.os.write
    calls = {"n": 0}

    def disk_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[: len(data) // 2])  # a short write...
        raise OSError(28, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(S.os, "write", disk_full)
    with pytest.raises(OSError):
        spool.append("t", b"k", b"x" * 1000)
    monkeypatch.undo()
    assert spool.size() == size and spool.pending_frames() == 2  # cut back: the request got no 202
    spool.append("t", b"k", b"later")
    assert [f.value for f in spool.pending()][-1] == b"later"
    spool.close()


def test_a_corrupt_length_is_never_read_as_gigabytes() -> None:
    good = encode_frame("t", b"k", b"v")
    bad_header = S.HEADER.pack(0xFFFFFFF0, 0)
    reader = CountingReader(good + bad_header + b"z" * 100)
    frames, end = read_frames(reader, 0)
    assert [f.value for f in frames] == [b"v"] and end == len(good)
    assert reader.read_bytes <= len(good) + len(bad_header)



def holding_a_frame(topic: str = "t") -> tuple[bytes, bytes]:
    """A frame whose value holds, byte for byte, an intact frame of its own (a webhook can carry any text in a
    field), and that inner frame."""
    inner = encode_frame("elsewhere", b"forged", b"not a record anyone sent")
    return encode_frame(topic, b"k", b"a" * 50 + inner + b"z" * 200), inner


def test_a_torn_frame_holding_a_frame_is_cut_and_nothing_inside_it_replayed(tmp_path: Path) -> None:
    """A kill in the middle of an append whose record holds the bytes of an intact frame: the torn frame's
    header and fields agree, so it is the last write cut short; the frame inside it is its value, never one
    of the spool's (a torn tail read as a corrupt middle frame would replay it)."""
    spool = Spool(tmp_path)
    values = fill(spool, 2)
    spool.close()
    outer, inner = holding_a_frame()
    with open(tmp_path / "spool.log", "ab") as f:
        f.write(outer[: outer.index(inner) + len(inner) + 20])
    reopened = Spool(tmp_path)
    assert [(f.topic, f.value) for f in reopened.pending()] == [("t", v) for v in values]
    assert not (tmp_path / "quarantine").exists()  # a torn write is cut, not a bad block to keep
    reopened.close()


def test_a_corrupt_frame_holding_a_frame_is_quarantined_whole(tmp_path: Path) -> None:
    """A bad block in a frame's value (its header and fields intact): the frame is moved aside whole, to its
    declared end; the intact frame its value holds is not taken for one of the spool's."""
    outer, inner = holding_a_frame()
    damaged = bytearray(outer)
    damaged[-5] ^= 0xFF  # in its value, after the frame it holds
    before, after = encode_frame("t", b"k", b"before"), encode_frame("t", b"k", b"after")
    (tmp_path / "spool.log").write_bytes(before + bytes(damaged) + after)
    reopened = Spool(tmp_path)
    assert [f.value for f in reopened.pending()] == [b"before", b"after"]
    (moved,) = (tmp_path / "quarantine").iterdir()
    assert moved.read_bytes() == bytes(damaged)
    reopened.close()


def test_a_corrupt_length_keeps_the_frames_after_it(tmp_path: Path) -> None:
    """A bad block in a length field (pointing past the end): its fields disagree with it, so it is no torn
    write, and the fsynced frames after it are kept."""
    spool = Spool(tmp_path)
    values = fill(spool, 4)
    frames = spool.pending()
    spool.close()
    data = bytearray((tmp_path / "spool.log").read_bytes())
    data[frames[0].end:frames[0].end + 4] = S.HEADER.pack(frames[1].end - frames[0].end + 5000, 0)[:4]
    (tmp_path / "spool.log").write_bytes(bytes(data))
    reopened = Spool(tmp_path)
    assert [f.value for f in reopened.pending()] == [values[0], *values[2:]]
    reopened.close()


def test_a_frame_corrupted_while_ingest_runs_is_moved_aside_and_the_replay_goes_on(tmp_path: Path) -> None:
    """Found by reading: the replay read forward from the marker, stopped at the first frame that failed its
    check, and only a restart's repair moved it aside; meanwhile every later frame waited in the spool."""
    spool = Spool(tmp_path)
    values = fill(spool, 5)
    frames = spool.pending()
    spool.ack(frames[0].end)
    assert not spool.repair()  # the frame at the marker reads well: nothing to repair
    with open(tmp_path / "spool.log", "r+b") as f:  # a bad block under the running spool
        f.seek(frames[1].end - 10)
        byte = f.read(1)
        f.seek(frames[1].end - 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert spool.pending() == []  # the replay stands at the corrupt frame
    assert spool.repair()
    (moved,) = (tmp_path / "quarantine").iterdir()
    assert len(moved.read_bytes()) == frames[1].end - frames[0].end  # kept whole
    assert spool.pending_frames() == 3
    spool.append("t", b"k", b"after")
    assert drain(spool, 500) == [*values[2:], b"after"]
    spool.close()


def test_a_corrupt_last_frame_while_running_is_quarantined_not_cut(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    values = fill(spool, 2)
    frames = spool.pending()
    spool.ack(frames[0].end)
    with open(tmp_path / "spool.log", "r+b") as f:
        f.seek(frames[1].end - 3)
        f.write(b"\x00\x00\x00")
    assert spool.repair()
    (moved,) = (tmp_path / "quarantine").iterdir()
    assert len(moved.read_bytes()) == frames[1].end - frames[0].end  # it had its 202: a copy, never cut
    assert spool.pending_bytes() == 0 and spool.pending_frames() == 0 and values
    spool.close()
