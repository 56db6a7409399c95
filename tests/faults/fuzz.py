"""Fuzzed request bodies for ingest: realistic EnableX bodies (both shapes, from ``enx-streams simulate``'s
generator), byte-level mutations of them and structure-aware ones. Pure and seeded: the same seed gives the
same bodies, so a failure can be replayed."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator

from streams.simulate import generate

NASTY_VALUES: list[object] = [None, True, False, 0, -1, 2**63, -(2**63) - 1, 1e308, -1e-308, 1.5, "", " ", "\x00",
                              "\ud800", "a\udfffb",
                              "null", "1e999", "NaN", "2026-13-45 25:61:61", "9" * 400, "’", "😀" * 50, [], {},
                              [None], {"url": None}, {"url": 5}, [{"url": ""}], ["x"] * 50, {"a": {"b": {"c": []}}}]
FIELDS = ["type", "app_id", "conf_num", "room_id", "trans_date", "recording", "transcoded", "chatdata", "files",
          "stage", "file_size", "destination", "url"]


def corpus(seed: int, sessions: int = 400) -> list[bytes]:
    """Valid bodies of ``sessions`` simulated sessions (with a few invalid ones the simulator makes)."""
    plan = generate(sessions, seed, duplicates=0.05, out_of_order=0.2, stalled=0.1, now_s=1_764_000_000,
                    invalid=0.02)
    return [delivery[0] for delivery in plan]


def _flip(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        if data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _delete(rng: random.Random, body: bytes) -> bytes:
    if not body:
        return body
    i = rng.randrange(len(body))
    return body[:i] + body[i + rng.randint(1, 16):]


def _insert(rng: random.Random, body: bytes) -> bytes:
    i = rng.randrange(len(body) + 1)
    junk = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randint(1, 12))), b"\xff\xfe", b"\x00",
                       "“".encode(), b"\\u0000", b"{", b"]", b'"', b",,", b"\xed\xa0\x80"])
    return body[:i] + junk + body[i:]


def _truncate(rng: random.Random, body: bytes) -> bytes:
    return body[:rng.randrange(len(body) + 1)]


def _splice(rng: random.Random, body: bytes) -> bytes:
    if len(body) < 2:
        return body * 2
    i, j = sorted(rng.sample(range(len(body)), 2))
    return body[:j] + body[i:j] + body[j:]


def _typographic(rng: random.Random, body: bytes) -> bytes:
    text = body.decode("utf-8", "replace")
    return text.replace('"', rng.choice(["“", "”"]), rng.randint(1, 4)).encode()


def _structure(rng: random.Random, body: bytes) -> bytes:
    """A JSON-aware mutation: a field dropped, retyped or added, or the whole body replaced."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return _flip(rng, body)
    if not isinstance(payload, dict):
        return body
    op = rng.randrange(5)
    field = rng.choice(FIELDS)
    if op == 0:
        payload.pop(field, None)
    elif op == 1:
        payload[field] = rng.choice(NASTY_VALUES)
    elif op == 2:
        payload[f"x_{rng.randrange(1000)}"] = rng.choice(NASTY_VALUES)
    elif op == 3:
        return json.dumps(rng.choice([payload.get(field), list(payload.values()), "text", 12, None])).encode()
    else:
        depth = rng.choice([50, 5000, 100_000])
        payload[field] = json.loads("[" * 50 + "]" * 50) if depth == 50 else None
        text = json.dumps(payload)
        text = text if depth == 50 else text.replace("null", "[" * depth + "]" * depth, 1)
        return text.encode("utf-8", "surrogatepass")
    return json.dumps(payload, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [_flip, _delete, _insert, _truncate, _splice,
                                                            _typographic, _structure, _structure]


def bodies(n: int, seed: int) -> Iterator[bytes]:
    """``n`` bodies: about one in five a valid simulated body as is, the rest mutated (one to three times)."""
    rng = random.Random(seed)
    base = corpus(seed)
    for _ in range(n):
        body = rng.choice(base)
        if rng.random() < 0.8:
            for _ in range(rng.randint(1, 3)):
                body = rng.choice(MUTATIONS)(rng, body)
        yield body
