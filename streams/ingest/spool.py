"""The local spool: where an accepted event waits, fsynced, while Kafka is unreachable.

One append-only file of frames (``len:u32 crc32:u32 payload``; payload = topic, key, value, each
length-prefixed) and a marker file holding the byte offset up to which frames were acknowledged by Kafka.
An append returns only after ``fsync``, so a 202 answered from the spool survives SIGKILL and power loss.
Frames are replayed in order, a batch at a time; the marker is rewritten atomically (write, fsync, rename)
after each acknowledged run of frames, so a crash can re-send at most the batch in flight at that instant;
its records carry the same ``event_id``, which every projection deduplicates. A torn last frame (crash mid-write) fails its CRC and is
discarded: its request never got a 202. A corrupt frame with intact frames after it (a bad disk block) is
moved to ``quarantine/`` at start and the frames after it are kept. A failed frame whose header and field
lengths agree is skipped to its declared end, never searched for frames inside it: a record may hold the
bytes of an intact frame (any text in a webhook's field), which a torn write must not turn into one.

Replay reads forward from the marker, one batch at a time (:meth:`Spool.pending`), never the whole file, so
draining N frames costs O(N) whatever the spool's size. Once everything is acknowledged the file is emptied:
the marker is reset to 0 first, then the file truncated. A crash between the two re-sends frames Kafka
already has (deduplicated by ``event_id``); the other order could leave a marker past the end of the file,
which would skip frames answered 202. A marker past the end (a spool from before this order) means the
truncation happened, so it reads as 0, and is written as 0 at once: frames appended after it must never
lie under a stale marker that the next start would take for acknowledged.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

HEADER = struct.Struct(">II")
FIELD = struct.Struct(">i")
# No frame ingest writes is longer (a record within the log's budget, its topic and key): a longer length
# read from a header is corruption, never a reason to read gigabytes.
MAX_FRAME_PAYLOAD = 9 * 1024 * 1024
log = logging.getLogger("streams.ingest")


@dataclass(frozen=True)
class Frame:
    topic: str
    key: bytes | None
    value: bytes
    end: int  # byte offset just past this frame


def encode_frame(topic: str, key: bytes | None, value: bytes) -> bytes:
    t = topic.encode()
    payload = (FIELD.pack(len(t)) + t + FIELD.pack(-1 if key is None else len(key)) + (key or b"")
               + FIELD.pack(len(value)) + value)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes, end: int) -> Frame:
    p = 0
    (tlen,) = FIELD.unpack_from(payload, p)
    p += 4
    topic = payload[p:p + tlen].decode()
    p += tlen
    (klen,) = FIELD.unpack_from(payload, p)
    p += 4
    key = None if klen < 0 else payload[p:p + klen]
    p += max(klen, 0)
    (vlen,) = FIELD.unpack_from(payload, p)
    p += 4
    return Frame(topic, key, payload[p:p + vlen], end)


def read_frames(f: BinaryIO, start: int, limit: int | None = None) -> tuple[list[Frame], int]:
    """Up to ``limit`` complete, intact frames of the open file ``f`` from byte ``start``, read forward (only
    those frames' bytes are read); stops at the first torn or corrupt one. Returns the frames and the offset
    just past the last good one."""
    frames: list[Frame] = []
    pos = start
    f.seek(start)
    while limit is None or len(frames) < limit:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            break
        length, crc = HEADER.unpack(header)
        if length > MAX_FRAME_PAYLOAD:
            break
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc or not _well_formed(payload):
            break
        pos += HEADER.size + length
        frames.append(_decode_payload(payload, pos))
    return frames, pos


def _well_formed(payload: bytes | memoryview) -> bool:
    """The payload's three length-prefixed fields add up to it exactly (topic, key or -1, value)."""
    if len(payload) < 3 * FIELD.size:
        return False
    (tlen,) = FIELD.unpack_from(payload, 0)
    if not 0 < tlen <= 255 or FIELD.size + tlen + FIELD.size > len(payload):
        return False
    (klen,) = FIELD.unpack_from(payload, FIELD.size + tlen)
    if klen < -1 or 2 * FIELD.size + tlen + max(klen, 0) + FIELD.size > len(payload):
        return False
    (vlen,) = FIELD.unpack_from(payload, 2 * FIELD.size + tlen + max(klen, 0))
    return vlen >= 0 and 3 * FIELD.size + tlen + max(klen, 0) + vlen == len(payload)


def declared_end(f: BinaryIO, start: int) -> int | None:
    """Where the frame at ``start`` of the open file ``f`` ends by its header, when that can be trusted: the
    length is plausible and the field lengths present (topic, key, value; a frame cut short has only some)
    agree with it. None when they disagree (a corrupt header: where the frame ends is unknown). Reads the
    header and the three field lengths only."""
    f.seek(start)
    header = f.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    length, _crc = HEADER.unpack(header)
    if not 3 * FIELD.size <= length <= MAX_FRAME_PAYLOAD:
        return None
    used = 0  # bytes of the payload taken by the fields read so far
    for field in ("topic", "key", "value"):
        f.seek(start + HEADER.size + used)
        raw = f.read(FIELD.size)
        if len(raw) < FIELD.size:  # cut short before this field: what is there agrees
            return start + HEADER.size + length
        (n,) = FIELD.unpack(raw)
        if (field == "topic" and not 0 < n <= 255) or (field == "key" and n < -1) or (field == "value" and n < 0):
            return None
        used += FIELD.size + max(n, 0)
        if used > length:
            return None
    return start + HEADER.size + length if used == length else None


def next_intact_frame(f: BinaryIO, start: int, end: int) -> int | None:
    """The first offset in ``[start, end)`` where an intact frame begins (a plausible length within ``end``,
    well-formed fields, CRC), or None: where to resume after a corrupt frame. A candidate is checked on its
    structure before its CRC, so the scan stays linear; it reads the region once."""
    f.seek(start)
    data = memoryview(f.read(end - start))
    for p in range(len(data) - HEADER.size + 1):
        length, crc = HEADER.unpack_from(data, p)
        if length < 3 * FIELD.size or length > MAX_FRAME_PAYLOAD or p + HEADER.size + length > len(data):
            continue
        payload = data[p + HEADER.size:p + HEADER.size + length]
        if _well_formed(payload) and zlib.crc32(payload) == crc:
            return start + p
    return None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame_ends(f: BinaryIO, start: int, stop: int) -> Iterator[int]:
    """The end offset of each frame from ``start`` whose declared length fits before ``stop``, hopping from
    header to header (8 bytes read per frame; payloads and CRCs are not read)."""
    pos = start
    while True:
        f.seek(pos)
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        (length, _crc) = HEADER.unpack(header)
        if length > MAX_FRAME_PAYLOAD or pos + HEADER.size + length > stop:
            return
        pos += HEADER.size + length
        yield pos


def stored_marker(marker: Path) -> int | None:
    """The marker file's value (None: no marker, or not a number)."""
    try:
        return int(marker.read_text() or 0)
    except (OSError, ValueError):
        return None


def checked_marker(path: Path, value: int | None) -> int:
    """A marker of the spool file ``path``, checked: past the end of the file it reads as 0 (the file was
    emptied after it); not on a frame boundary (never written so, but a marker is a plain file) it reads as
    the boundary before it, so at most one frame is sent again and none is skipped."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if value is None or value <= 0 or value > size:
        return 0
    with open(path, "rb") as f:
        return max(_frame_ends(f, 0, value), default=0)


def read_marker(path: Path, marker: Path) -> int:
    """The checked marker of the spool file ``path`` (:func:`checked_marker`)."""
    return checked_marker(path, stored_marker(marker))


@dataclass(frozen=True)
class SpoolView:
    """What a spool directory holds for Kafka, read without changing anything (``enx-streams status``)."""

    pending_bytes: int
    pending_frames: int  # frames after the marker, counted by their headers (a torn tail is not counted)
    oldest: Frame | None  # the first of them, if intact


def peek(directory: Path) -> SpoolView | None:
    """The spool in ``directory`` as it stands, read-only (no repair, no file created: ingest may be running
    or not); None when there is no spool file. Reads the frame headers past the marker, and one frame."""
    path, marker = Path(directory) / "spool.log", Path(directory) / "spool.acked"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    acked = read_marker(path, marker)
    with open(path, "rb") as f:
        oldest = read_frames(f, acked, 1)[0]
        frames = sum(1 for _ in _frame_ends(f, acked, size))
    return SpoolView(pending_bytes=max(0, size - acked), pending_frames=frames, oldest=oldest[0] if oldest else None)


class Spool:
    """Blocking file operations: call them from a thread (the producer does)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "spool.log"
        self.marker = self.directory / "spool.acked"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        # appends (request handlers' threads), acks and the reset (the replay's) and a shutdown's replay may
        # run in threads at once: one at a time on the file, the marker and the counts
        self._lock = threading.RLock()
        stored = stored_marker(self.marker)
        self._acked = checked_marker(self.path, stored)  # this process is the spool's only writer: ack() keeps it
        if stored is not None and stored != self._acked:
            # corrected on disk too, before any append: frames accepted now must not grow under a stale
            # marker that a later start would read as inside the file (and skip them)
            self._write_marker(self._acked)
        self._frames = 0  # frames not yet acknowledged: counted by _drop_torn_tail, then kept
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Check the frames after the marker, reading forward a batch at a time: a torn last frame (a crash
        mid-write: its request never got a 202) is cut; a corrupt frame with intact frames after it (a bad
        disk block) is moved to ``quarantine/`` and the frames after it are kept (:meth:`_cut_out`)."""
        while True:
            size, good = self.size(), self._acked
            self._frames = 0
            with open(self.path, "rb") as f:
                while good < size:
                    frames, good_after = read_frames(f, good, 10_000)
                    if not frames:
                        break
                    good = good_after
                    self._frames += len(frames)
                resume = self._resume_after(f, good, size) if good < size else None
            if good == size:
                return
            if resume is None:  # nothing intact after it: a torn tail
                log.warning("spool %s: cut %d bytes of a torn last frame (a write that never got its 202)",
                            self.path, size - good)
                os.ftruncate(self._fd, good)
                os.fsync(self._fd)
                return
            log.error("spool %s: bytes %d..%d are corrupt (a bad block?); moved to quarantine/, the %d bytes "
                      "after them kept", self.path, good, resume, size - resume)
            self._cut_out(good, resume)

    @staticmethod
    def _resume_after(f: BinaryIO, bad: int, size: int) -> int | None:
        """Where the intact frames resume after the frame at ``bad`` that failed its check, or None (a torn
        tail). When its header and fields agree, nothing before its declared end is a frame of its own (a
        record may hold a frame's bytes); running past the end of the file, it is the last write, cut short
        by a crash. Otherwise (a corrupt header) the next intact frame after its first byte."""
        end = declared_end(f, bad)
        if end is None:
            return next_intact_frame(f, bad + 1, size)
        return None if end >= size else next_intact_frame(f, end, size)

    def _cut_out(self, start: int, end: int) -> None:
        """Remove the corrupt bytes ``[start, end)``: they go whole to ``quarantine/``; the frames not yet in
        Kafka, less those bytes, are written to a new file, fsynced, and renamed over the spool. The marker
        is reset to 0 before the rename, so a crash in between re-sends (or repeats this), never skips."""
        quarantine = self.directory / "quarantine"
        quarantine.mkdir(exist_ok=True)
        tmp = self.directory / "spool.log.rebuilt"
        with open(self.path, "rb") as src:
            src.seek(start)
            _write_synced(quarantine / f"{int(time.time() * 1000)}-corrupt-{start}-{end}.bin", src.read(end - start))
            with open(tmp, "wb") as out:
                for lo, hi in ((self._acked, start), (end, self.size())):
                    src.seek(lo)
                    remaining = hi - lo
                    while remaining > 0:
                        chunk = src.read(min(remaining, 1 << 20))
                        out.write(chunk)
                        remaining -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
        self.ack(0)
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)

    def repair(self) -> bool:
        """While running: the frame at the marker fails its check although no append is under way (appends
        hold the lock and never leave a torn frame: a bad disk block, or a change from outside), so the replay
        would stop there for good. Its bytes up to the next intact frame, or to the end of the file, go to
        ``quarantine/`` as at start (every frame here got its 202: none is cut without a copy), the frames
        after them are kept. False when the frame at the marker reads well or nothing is pending."""
        with self._lock:
            start, size = self._acked, self.size()
            if start >= size:
                return False
            with open(self.path, "rb") as f:
                if read_frames(f, start, 1)[0]:
                    return False
                resume = self._resume_after(f, start, size)
            end = size if resume is None else resume
            log.error("spool %s: bytes %d..%d are corrupt (a bad block?) while ingest runs; moved to quarantine/, "
                      "the %d bytes after them kept", self.path, start, end, size - end)
            self._cut_out(start, end)
            self._frames = self._count_frames()
            return True

    def _count_frames(self) -> int:
        n, at, size = 0, self._acked, self.size()
        with open(self.path, "rb") as f:
            while at < size:
                frames, at = read_frames(f, at, 10_000)
                if not frames:
                    break
                n += len(frames)
        return n

    def acked(self) -> int:
        """Bytes of the file already in Kafka (the durable marker's value, kept in memory: the producer asks
        for it on every request, and reading the marker each time was 5% of ingest's time)."""
        return self._acked

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def pending_bytes(self) -> int:
        return max(0, self.size() - self.acked())

    def pending_frames(self) -> int:
        return self._frames

    def oldest(self) -> Frame | None:
        """The first frame not yet acknowledged (one frame read from the marker), or None."""
        if self.pending_bytes() == 0:
            return None
        with open(self.path, "rb") as f:
            frames, _ = read_frames(f, self.acked(), 1)
        return frames[0] if frames else None

    def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Write the frame whole and fsync it; on any failure (a full disk, a quota) the file is cut back to
        where it was and the error raised: a torn frame never sits in front of later ones."""
        frame = encode_frame(topic, key, value)
        with self._lock:
            before = self.size()
            try:
                written = 0
                while written < len(frame):
                    n = os.write(self._fd, frame[written:])
                    if n <= 0:
                        raise OSError(f"the spool took {written} of {len(frame)} bytes")
                    written += n
                os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, before)
                raise
            self._frames += 1

    def pending(self, limit: int = 500) -> list[Frame]:
        """The next ``limit`` frames not yet acknowledged, read forward from the marker (their bytes only)."""
        with open(self.path, "rb") as f:
            return read_frames(f, self.acked(), limit)[0]

    def ack(self, end: int, frames: int = 1) -> None:
        """The frames up to ``end`` are in Kafka: ``frames`` more than the marker said before."""
        with self._lock:
            self._write_marker(end)
            self._frames = 0 if end == 0 or end >= self.size() else max(0, self._frames - frames)
            self._acked = end

    def _write_marker(self, end: int) -> None:
        """Write the marker atomically: a temporary file, fsynced, renamed over it, the directory fsynced."""
        tmp = self.marker.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(end))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.marker)
        _fsync_dir(self.directory)  # the new marker is on disk before the file may be truncated or replaced

    def reset_if_drained(self) -> bool:
        """Empty the file once everything in it was acknowledged (the caller holds off appends)."""
        with self._lock:
            if self.size() and self.acked() >= self.size():
                self.ack(0)  # first: a crash before the truncation re-sends, never skips (module doc)
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                return True
            return False

    def writable(self) -> bool:
        return os.access(self.directory, os.W_OK)

    def room_for(self, nbytes: int, max_bytes: int, min_free_bytes: int) -> bool:
        """Whether a frame of ``nbytes`` may be appended: what waits for Kafka stays within ``max_bytes`` and the
        disk keeps ``min_free_bytes`` free (what Kafka already has is cut off once the spool drains)."""
        if self.pending_bytes() + nbytes + HEADER.size + 3 * FIELD.size > max_bytes:
            return False
        stat = os.statvfs(self.directory)
        return stat.f_bavail * stat.f_frsize - nbytes >= min_free_bytes

    def close(self) -> None:
        os.close(self._fd)
