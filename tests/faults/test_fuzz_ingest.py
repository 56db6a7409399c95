"""Fuzz: FAULTS_FUZZ_N (100,000 by default) generated and mutated bodies against a running ingest on the real
broker. No 5xx and no dropped connection; ingest stays up; every 400 is on the dead-letter topic with a
reason and the exact bytes posted; every 202 is in the event log; the ingest process's memory stays flat.

The bodies come from tests/faults/fuzz.py with FAULTS_FUZZ_SEED (a failure names the seed to replay).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer

from streams import watermark
from streams.avro import default_codec
from tests.faults.fuzz import bodies
from tests.faults.record import record_result
from tests.integration.test_ingest_spool import Ingest

N = int(os.environ.get("FAULTS_FUZZ_N", "100000"))
SEED = int(os.environ.get("FAULTS_FUZZ_SEED", "20261124"))
CONCURRENCY = 32
RSS_GROWTH_LIMIT_MB = 25.0  # from the first quarter to the end


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def post_all(url: str, pid: int) -> tuple[Counter, dict[str, str], set[str], list[float], list[str]]:
    """Post every body; (status counts, dead-letter id -> body hash, accepted event ids, RSS samples, errors)."""
    statuses: Counter = Counter()
    letters: dict[str, str] = {}
    accepted: set[str] = set()
    errors: list[str] = []
    rss: list[float] = []
    queue: asyncio.Queue = asyncio.Queue(maxsize=CONCURRENCY * 4)

    async def client(session: aiohttp.ClientSession) -> None:
        while (body := await queue.get()) is not None:
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    answer = await response.json(content_type=None)
                    statuses[response.status] += 1
                    if response.status == 400:
                        letters[answer["deadletter_id"]] = hashlib.sha256(body).hexdigest()
                        assert answer["error"], answer
                    elif response.status == 202:
                        accepted.add(answer["event_id"])
                    else:
                        errors.append(f"{response.status}: {answer} for {body[:200]!r}")
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
                errors.append(f"{exc!r} for {body[:200]!r}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        clients = [asyncio.create_task(client(session)) for _ in range(CONCURRENCY)]
        try:
            for i, body in enumerate(bodies(N, SEED)):
                await queue.put(body)
                if i and i % (N // 4) == 0:
                    rss.append(rss_mb(pid))
            for _ in clients:
                await queue.put(None)
            await asyncio.gather(*clients)
        finally:
            for task in clients:
                task.cancel()
    rss.append(rss_mb(pid))
    return statuses, letters, accepted, rss, errors


async def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 120) -> list[dict]:
    codec = default_codec()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=f"fuzz-read-{uuid.uuid4().hex}",
                                max_poll_records=5000)
    await consumer.start()
    out: list[dict] = []
    try:
        deadline = time.monotonic() + timeout_s
        quiet_until = None
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out += [e for e in (codec.decode(r.value) for r in records) if not watermark.is_mark(e)]
            if len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + 2  # a little longer: extra records would show
                if time.monotonic() >= quiet_until:
                    break
    finally:
        await consumer.stop()
    return out


def test_fuzzed_bodies_against_ingest(bootstrap: str, tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, bootstrap)
    ingest.start()
    assert ingest.proc is not None
    started = time.monotonic()
    try:
        statuses, letters, accepted, rss, errors = asyncio.run(post_all(ingest.url, ingest.proc.pid))
        posting_s = time.monotonic() - started
        assert not errors, f"{len(errors)} bad answers (seed {SEED}), e.g. {errors[:3]}"
        assert ingest.proc.poll() is None, ingest.log.read_text()[-3000:]
        assert sum(statuses.values()) == N and set(statuses) <= {202, 400}, statuses
        growth = rss[-1] - rss[0]
        assert growth < RSS_GROWTH_LIMIT_MB, f"ingest RSS grew {growth:.1f} MB over the run: {rss}"

        dead = asyncio.run(read_topic(bootstrap, f"{ingest.prefix}deadletter.v1", len(letters)))
        by_id = {d["id"]: d for d in dead}
        assert len(by_id) == len(dead) == len(letters), (len(dead), len(letters))
        assert set(by_id) == set(letters)
        for letter_id, digest in letters.items():
            letter = by_id[letter_id]
            assert letter["reason"] and hashlib.sha256(letter["raw"]).hexdigest() == digest, letter
        reasons = Counter(d["reason"].split(":")[0] for d in dead)

        logged = asyncio.run(read_topic(bootstrap, f"{ingest.prefix}webhooks.v1", statuses[202]))
        assert {e["event_id"] for e in logged} == accepted
        assert ingest.stop() == 0
        record_result("fuzz", bodies=N, seed=SEED, accepted=statuses[202], rejected=statuses[400],
                      dead_letters=len(dead), server_errors=0, lost=0, rss_mb=[round(x, 1) for x in rss],
                      posting_s=round(posting_s, 1), duration_s=round(time.monotonic() - started, 1),
                      reasons=dict(reasons.most_common()))
    finally:
        if ingest.proc and ingest.proc.poll() is None:
            ingest.proc.kill()
