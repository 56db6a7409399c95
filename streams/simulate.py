"""``enx-streams simulate``: realistic EnableX webhook traffic posted to an ingest URL.

Two parts, kept apart:

- :func:`generate` is pure: from a seed and a reference time it plans every body to post, in send order,
  with what each one is (:class:`Delivery`) and the totals a user can check the dashboards against
  (:class:`Expected`). Same arguments, same bytes.
- :func:`run` posts a plan with aiohttp at a given rate (bounded concurrency, a progress bar on stderr),
  counts the responses by status and returns a printable summary.

What the traffic looks like (both payload shapes of the EnableX documents in ``seeds/``):

- *classic* sessions (the webhook notification document): ``trans_date`` as Unix seconds or milliseconds,
  as a number or a string; ``recording`` an array of URL strings; one ``transcoded`` event per composite
  file with ``recording`` a single URL string, ``stage`` and ``file_size`` as strings;
- *objects* sessions (the live-recording document): ``trans_date`` as a UTC datetime string (or ISO 8601);
  ``recording``, ``transcoded`` and ``chatdata`` as arrays of ``{"url": ...}``;
- every session ends with a ``roomdrop``; most are recorded; ``file-transfer`` deliveries go to every
  destination kind (``awss3`` with an account, ``ftp`` / ``sftp`` / ``ssh`` with a host).

Timing, in event time (``trans_date``): every session is anchored at the moment it is planned to be posted
(``now_s``, plus its share of ``spread_s`` when the run takes a while), and all its events lie before that
anchor. An on-time session's composite comes 10-36 minutes after its end and its deadline (end + 45 min)
is still at least 5 minutes ahead of its anchor, so a live SLA watch never fires for it. A session meant
to stall ended 50-120 minutes before its anchor and never gets a ``transcoded``: its deadline has already
passed when it is posted, so a live watch raises ``transcode_stalled`` within its sweep interval. A *late*
session gets its composite 46-60 minutes after its end (a stall, then a recovery).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

SLA_S = 45 * 60
TYPES = ("roomdrop", "recording", "transcoded", "file-transfer", "chatdata")
DESTINATIONS = ("awss3", "ftp", "sftp", "ssh")
SHAPES = ("classic", "objects")

# Shares of the traffic that are not options of the command (documented in the summary).
RECORDED_SHARE = 0.85        # sessions with a recording (the rest: a roomdrop, sometimes chat)
LIVE_RECORDED_SHARE = 0.08   # of the unrecorded: live-recorded, composite straight after the end
DELIVERY_SHARE = 0.6         # of the composited sessions: a file-transfer of the composite
CHAT_SHARE = 0.6             # of objects-shape sessions: chat scripts


class SimulationError(Exception):
    """The simulation cannot go on; the message says what to do next."""


class Delivery(NamedTuple):
    """One POST: the body exactly as sent, and what it is (for tests and the summary). Unpacks as a pair."""

    body: bytes
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a plan sends, to check the dashboards against."""

    sessions: int
    events: int                      # distinct events (a duplicate is the same event again)
    deliveries: int                  # POSTs, duplicates and invalid bodies included
    duplicates: int                  # extra deliveries of an event already sent
    invalid: int                     # bodies that are not EnableX events (rejected: 400 + dead letter)
    stalled_sessions: int            # recorded, deadline passed, no transcoded sent
    late_sessions: int               # transcoded after the deadline (stalled, then recovered)
    recorded_sessions: int           # a recording event was sent
    out_of_order_sessions: int       # events delivered in another order than their event time
    by_type: dict[str, int]          # distinct events per type
    by_destination: dict[str, int]   # distinct file-transfer events per destination kind
    by_shape: dict[str, int]         # sessions per payload shape


@dataclasses.dataclass(frozen=True)
class Plan:
    deliveries: list[Delivery]
    expected: Expected

    def __iter__(self) -> Iterator[Delivery]:  # (body, meta) pairs in send order
        return iter(self.deliveries)

    def __len__(self) -> int:
        return len(self.deliveries)


# -- the generator (pure) ---------------------------------------------------------------------------

def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _trans_date(shape: str, t_s: float, rng: random.Random) -> tuple[Any, str]:
    """``t_s`` (Unix seconds) written as EnableX might: returns (value, format name)."""
    if shape == "classic":
        fmt = rng.choice(("s", "s_str", "ms", "ms_str"))
        if fmt == "s":
            return int(t_s), fmt
        if fmt == "s_str":
            return str(int(t_s)), fmt
        if fmt == "ms":
            return int(t_s * 1000), fmt
        return str(int(t_s * 1000)), fmt
    when = dt.datetime.fromtimestamp(int(t_s), dt.timezone.utc)
    if rng.random() < 0.8:
        return when.strftime("%Y-%m-%d %H:%M:%S"), "datetime"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), "iso8601"


@dataclasses.dataclass
class _Event:
    type: str
    t_s: float                     # event time
    payload: dict[str, Any]
    fmt: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _session_events(rng: random.Random, *, index: int, app_id: str, anchor_s: float, shape: str, recorded: bool,
                    live: bool, fate: str, destination: str | None, chat: bool) -> list[_Event]:
    """The events of one session, in event-time order. ``fate``: on_time, stalled or late."""
    room_id = _hex(rng, 24)
    conf_num = f"{rng.randint(100, 999)}{index:06d}"
    base_url = f"https://recordings.enablex.io/{app_id}/{room_id}/{conf_num}"
    if fate == "stalled":
        end_s = anchor_s - rng.uniform(50, 120) * 60
        composite_s = None
    elif fate == "late":
        end_s = anchor_s - rng.uniform(65, 120) * 60
        composite_s = end_s + rng.uniform(46, 60) * 60
    else:
        composite_s_lat = rng.uniform(10, 36) * 60
        end_s = anchor_s - composite_s_lat - rng.uniform(1.5, 4) * 60
        composite_s = end_s + composite_s_lat
    if not recorded and not live:
        composite_s = None

    def head(kind: str, t_s: float) -> tuple[dict[str, Any], str]:
        value, fmt = _trans_date(shape, t_s, rng)
        return {"type": kind, "trans_date": value, "app_id": app_id, "room_id": room_id, "conf_num": conf_num}, fmt

    events: list[_Event] = []
    payload, fmt = head("roomdrop", end_s)
    events.append(_Event("roomdrop", end_s, payload, fmt))

    if recorded:
        t = end_s + rng.uniform(1, 8) * 60
        n = rng.randint(1, 3)
        urls = [f"{base_url}/stream-{k + 1}-{_hex(rng, 8)}.mkv" for k in range(n)]
        payload, fmt = head("recording", t)
        payload["recording"] = urls if shape == "classic" else [{"url": u} for u in urls]
        events.append(_Event("recording", t, payload, fmt))

    if chat:
        t = end_s + rng.uniform(0.5, 5) * 60
        payload, fmt = head("chatdata", t)
        payload["chatdata"] = [{"url": f"{base_url}/chat-{_hex(rng, 8)}.json"}]
        events.append(_Event("chatdata", t, payload, fmt))

    composite_urls: list[str] = []
    last_composite_s = composite_s
    if composite_s is not None:
        if shape == "classic":
            # one notification per composite file, each with its stage and size as strings
            stages = 1 if rng.random() < 0.7 else 2
            t = composite_s
            for stage in range(1, stages + 1):
                url = f"{base_url}/composite-{stage}-{_hex(rng, 8)}.mp4"
                payload, fmt = head("transcoded", t)
                payload["recording"] = url
                payload["stage"] = str(stage)
                payload["file_size"] = str(rng.randint(5_000_000, 900_000_000))
                events.append(_Event("transcoded", t, payload, fmt))
                composite_urls.append(url)
                last_composite_s = t
                t += rng.uniform(5, 30)
        else:
            url = f"{base_url}/composite-{_hex(rng, 8)}.mp4"
            payload, fmt = head("transcoded", composite_s)
            payload["transcoded"] = [{"url": url}]
            events.append(_Event("transcoded", composite_s, payload, fmt))
            composite_urls.append(url)

    if destination is not None and composite_urls and last_composite_s is not None:
        # delivered after the composite, still before the session's anchor
        t = last_composite_s + rng.uniform(5, max(6.0, min(600.0, anchor_s - last_composite_s - 5)))
        payload, fmt = head("file-transfer", t)
        names = [u.rsplit("/", 1)[1] for u in composite_urls]
        if destination == "awss3":
            bucket = f"enx-archive-{app_id[:6]}"
            dest = {"name": "awss3", "host": "", "account": f"{rng.randint(10**11, 10**12 - 1)}"}
            files = [{"url": f"https://{bucket}.s3.amazonaws.com/{conf_num}/{n}"} for n in names]
        else:
            host = f"{destination}.media-{app_id[:6]}.example.com"
            dest = {"name": destination, "host": host, "account": ""}
            files = [{"url": f"{destination}://{host}/archive/{conf_num}/{n}"} for n in names]
        payload["destination"] = dest
        payload["files"] = files
        events.append(_Event("file-transfer", t, payload, fmt, {"destination": destination}))

    events.sort(key=lambda e: e.t_s)
    return events


def _invalid_body(rng: random.Random, app_id: str, t_s: float) -> tuple[bytes, str]:
    """A body that is not an EnableX event, as a misconfigured sender might post it."""
    kind = rng.choice(("typographic_quotes", "truncated", "no_type", "not_object"))
    if kind == "typographic_quotes":  # copied from the documentation as is: not JSON
        body = (f'{{ \u201ctype\u201d: \u201croomdrop\u201d, \u201ctrans_date\u201d: \u201c{int(t_s)}\u201d, '
                f'\u201capp_id\u201d: \u201c{app_id}\u201d, \u201cconf_num\u201d: \u201c1\u201d }}')
        return body.encode("utf-8"), kind
    if kind == "truncated":
        return json.dumps({"type": "recording", "app_id": app_id, "conf_num": "1"}).encode()[:-7], kind
    if kind == "no_type":
        return json.dumps({"trans_date": int(t_s), "app_id": app_id, "conf_num": "1"}).encode(), kind
    return json.dumps([{"type": "roomdrop", "app_id": app_id}]).encode(), kind


def generate(sessions: int, seed: int, duplicates: float, out_of_order: float, stalled: float, now_s: float, *,
             late: float | None = None, invalid: float = 0.0, spread_s: float = 0.0, apps: int = 3) -> Plan:
    """Plan ``sessions`` sessions of EnableX traffic. Pure: the same arguments give the same bodies.

    ``duplicates``: share of events delivered twice (same bytes, so the same ``event_id``);
    ``out_of_order``: share of sessions whose events are delivered in a shuffled order;
    ``stalled``: share of recorded sessions whose composite never comes; ``late`` (default: half of
    ``stalled``): share of recorded sessions whose composite comes after the deadline;
    ``invalid``: share of extra bodies that are not EnableX events; ``now_s``: Unix seconds of the first
    post; ``spread_s``: how long the posting is expected to take (each session is anchored at its share of
    it, so its timing relative to its own post holds over a long run).
    """
    for name, share in (("duplicates", duplicates), ("out_of_order", out_of_order), ("stalled", stalled),
                        ("invalid", invalid)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} is a share between 0 and 1, got {share}")
    if sessions < 0:
        raise ValueError(f"sessions must be >= 0, got {sessions}")
    late_share = stalled / 2 if late is None else late
    if not 0.0 <= late_share <= 1.0 or stalled + late_share > 1.0:
        raise ValueError(f"late is a share between 0 and 1 - stalled, got {late_share}")

    rng = random.Random(seed)
    app_ids = [_hex(rng, 24) for _ in range(max(1, apps))]

    # What each session is: shape alternates (both shapes in any run of two), recorded by share;
    # the stalled and late sessions are drawn as exact counts among the recorded ones.
    shapes = [SHAPES[i % 2] for i in range(sessions)]
    recorded = [rng.random() < RECORDED_SHARE for _ in range(sessions)]
    live = [not r and rng.random() < LIVE_RECORDED_SHARE for r in recorded]
    recorded_idx = [i for i in range(sessions) if recorded[i]]
    n_stalled = round(stalled * len(recorded_idx))
    n_late = min(len(recorded_idx) - n_stalled, round(late_share * len(recorded_idx)))
    fate = ["on_time"] * sessions
    drawn = rng.sample(recorded_idx, n_stalled + n_late)
    for i in drawn[:n_stalled]:
        fate[i] = "stalled"
    for i in drawn[n_stalled:]:
        fate[i] = "late"
    n_ooo = round(out_of_order * sessions)
    shuffled = set(rng.sample(range(sessions), n_ooo))

    planned: list[tuple[float, int, Delivery]] = []  # (send key, tie-break, delivery)
    by_type: Counter[str] = Counter()
    by_destination: Counter[str] = Counter()
    deliveries_of_transfers = 0
    n_dup = 0
    n_ooo_sent = 0
    seq = 0
    for i in range(sessions):
        anchor = now_s + (spread_s * i / sessions if sessions else 0.0)
        composited = (recorded[i] or live[i]) and fate[i] != "stalled"
        destination = None
        if composited and rng.random() < DELIVERY_SHARE:
            destination = DESTINATIONS[deliveries_of_transfers % len(DESTINATIONS)]
            deliveries_of_transfers += 1
        chat = shapes[i] == "objects" and rng.random() < CHAT_SHARE
        events = _session_events(rng, index=i, app_id=app_ids[i % len(app_ids)], anchor_s=anchor, shape=shapes[i],
                                 recorded=recorded[i], live=live[i], fate=fate[i], destination=destination,
                                 chat=chat)
        # send keys: sessions in order, neighbours interleaved; a shuffled session's keys permuted
        keys = sorted(i + rng.uniform(0, 1.5) for _ in events)
        shuffle = i in shuffled and len(events) > 1  # a lone roomdrop cannot come out of order
        if shuffle:
            n_ooo_sent += 1
            original = list(keys)
            while keys == original:
                rng.shuffle(keys)
        key_of = f"{app_ids[i % len(app_ids)]}/{events[0].payload['conf_num']}"
        for order, (event, key) in enumerate(zip(events, keys)):
            body = json.dumps(event.payload).encode("utf-8")
            meta = {"session": key_of, "app_id": event.payload["app_id"], "conf_num": event.payload["conf_num"],
                    "type": event.type, "shape": shapes[i], "trans_date_format": event.fmt,
                    "trans_date_s": event.t_s, "fate": fate[i], "recorded": recorded[i], "live": live[i],
                    "out_of_order": shuffle, "event_order": order, "duplicate": False, "invalid": False,
                    **event.extra}
            planned.append((key, seq, Delivery(body, meta)))
            seq += 1
            by_type[event.type] += 1
            if "destination" in event.extra:
                by_destination[event.extra["destination"]] += 1
            if rng.random() < duplicates:
                planned.append((key + rng.uniform(0.2, 3.0), seq, Delivery(body, {**meta, "duplicate": True})))
                seq += 1
                n_dup += 1

    n_invalid = round(invalid * sum(by_type.values()))
    for k in range(n_invalid):
        body, kind = _invalid_body(rng, app_ids[k % len(app_ids)], now_s)
        planned.append((rng.uniform(0, max(1, sessions)), seq, Delivery(body, {
            "invalid": True, "invalid_kind": kind, "duplicate": False, "type": None, "session": None})))
        seq += 1

    planned.sort(key=lambda p: (p[0], p[1]))
    deliveries = [d for _, _, d in planned]
    expected = Expected(
        sessions=sessions,
        events=sum(by_type.values()),
        deliveries=len(deliveries),
        duplicates=n_dup,
        invalid=n_invalid,
        stalled_sessions=n_stalled,
        late_sessions=n_late,
        recorded_sessions=len(recorded_idx),
        out_of_order_sessions=n_ooo_sent,
        by_type={t: by_type.get(t, 0) for t in TYPES},
        by_destination={d: by_destination.get(d, 0) for d in DESTINATIONS},
        by_shape={s: shapes.count(s) for s in SHAPES},
    )
    return Plan(deliveries, expected)


# -- posting ----------------------------------------------------------------------------------------

CONNECT_ATTEMPTS = 4
BACKOFF_S = (0.25, 0.5, 1.0)


@dataclasses.dataclass
class Outcome:
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    max_lag_s: float = 0.0
    elapsed_s: float = 0.0


def redact_url(url: str) -> str:
    """The URL with a token in ``/webhooks/enablex/{token}`` (or a password) masked: safe to print."""
    url = re.sub(r"(/webhooks/enablex/)[^/?#]+", r"\1***", url)
    return re.sub(r"(//[^:/@]+:)[^@/]+@", r"\1***@", url)


async def post_plan(url: str, deliveries: list[Delivery], rate: float, *, concurrency: int | None = None,
                    on_sent: Callable[[int], None] = lambda _status: None,
                    clock: Callable[[], float] = time.monotonic) -> Outcome:
    """POST each body at ``rate`` per second in plan order, at most ``concurrency`` in flight.

    A connection error is retried a few times with backoff; when it persists, :class:`SimulationError`.
    """
    import aiohttp

    limit = concurrency or max(4, min(64, int(rate)))
    outcome = Outcome()
    semaphore = asyncio.Semaphore(limit)
    start = clock()
    safe_url = redact_url(url)

    async def post(session: aiohttp.ClientSession, body: bytes) -> None:
        last: BaseException | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    outcome.statuses[resp.status] += 1
                    on_sent(resp.status)
                    return
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                last = exc
                if attempt < len(BACKOFF_S):
                    await asyncio.sleep(BACKOFF_S[attempt])
        raise SimulationError(
            f"could not reach {safe_url} after {CONNECT_ATTEMPTS} attempts ({type(last).__name__}: {last}). "
            f"Is the ingest running? Start the whole stack with `enx-streams dev` (or `enx-streams ingest`), "
            f"or point --url at a running ingest.")

    async def one(session: aiohttp.ClientSession, body: bytes) -> None:
        try:
            await post(session, body)
        finally:
            semaphore.release()

    timeout = aiohttp.ClientTimeout(total=30, connect=5)
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            for n, delivery in enumerate(deliveries):
                due = start + n / rate
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                await semaphore.acquire()
                outcome.max_lag_s = max(outcome.max_lag_s, clock() - due)
                tasks.append(asyncio.ensure_future(one(session, delivery.body)))
                failed = [t for t in tasks if t.done() and t.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                tasks = [t for t in tasks if not t.done()]
            if tasks:
                await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    outcome.elapsed_s = clock() - start
    return outcome


def summarise(url: str, seed: int, expected: Expected, outcome: Outcome | None) -> str:
    """The printable summary of a run (or of a plan, when ``outcome`` is None)."""
    e = expected
    types = ", ".join(f"{t} {n}" for t, n in e.by_type.items())
    dests = ", ".join(f"{d} {n}" for d, n in e.by_destination.items())
    shapes = ", ".join(f"{s} {n}" for s, n in e.by_shape.items())
    lines = [
        f"simulated EnableX traffic to {redact_url(url)} (seed {seed})",
        f"  sessions             {e.sessions:>7}  ({shapes}; {e.recorded_sessions} recorded)",
        f"  events               {e.events:>7}  ({types})",
        f"  posts sent           {e.deliveries:>7}  ({e.duplicates} duplicates, {e.invalid} invalid bodies, "
        f"{e.out_of_order_sessions} sessions out of order)",
        f"  meant to stall       {e.stalled_sessions:>7}  sessions: recorded, deadline passed, no transcoded sent",
        f"  transcoded late      {e.late_sessions:>7}  sessions: composite after the deadline (stall, then recovery)",
        f"  file transfers       {sum(e.by_destination.values()):>7}  ({dests})",
    ]
    if outcome is not None:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(outcome.statuses.items())) or "none"
        rate = e.deliveries / outcome.elapsed_s if outcome.elapsed_s > 0 else 0.0
        lines.append(f"  responses                     {statuses}  ({outcome.elapsed_s:.1f} s, {rate:.1f}/s)")
        if outcome.statuses.get(401):
            lines.append("  note: 401 means the ingest wants its token: use --url .../webhooks/enablex/<token>")
        if outcome.max_lag_s > 120:
            lines.append(f"  note: posting fell {outcome.max_lag_s:.0f} s behind the rate; sessions posted late "
                         f"may be judged stalled: lower --rate")
    lines += [
        "check it against ClickHouse, for example:",
        "  enx-streams sql \"SELECT sla_state, count() FROM enablex.sessions FINAL GROUP BY sla_state\"",
        "  enx-streams sql \"SELECT type, count() FROM enablex.webhook_events FINAL GROUP BY type\"",
    ]
    return "\n".join(lines)


def run(url: str, sessions: int, rate: float, duplicates: float, out_of_order: float, stalled: float,
        seed: int) -> str:
    """``enx-streams simulate``: generate the traffic, post it with a progress bar, return the summary."""
    if sessions < 1:
        raise SimulationError(f"--sessions must be at least 1, got {sessions}")
    if not rate > 0:
        raise SimulationError(f"--rate must be a positive number of events per second, got {rate}")
    for flag, share in (("--duplicates", duplicates), ("--out-of-order", out_of_order), ("--stalled", stalled)):
        if not 0.0 <= share <= 1.0:
            raise SimulationError(f"{flag} is a share between 0 and 1, got {share}")
    if not url.startswith(("http://", "https://")):
        raise SimulationError(f"--url must be an http(s) URL such as http://localhost:8080/webhooks/enablex, "
                              f"got {redact_url(url)}")
    now_s = time.time()
    try:
        # twice: the first pass counts the posts, so each session can be anchored at its share of the run
        first = generate(sessions, seed, duplicates, out_of_order, stalled, now_s)
        plan = generate(sessions, seed, duplicates, out_of_order, stalled, now_s,
                        spread_s=first.expected.deliveries / rate)
    except ValueError as exc:
        raise SimulationError(str(exc)) from exc

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]posting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task("posting", total=len(plan.deliveries), status="")
        counts: Counter[int] = Counter()

        def on_sent(status: int) -> None:
            counts[status] += 1
            progress.update(task, advance=1,
                            status=" ".join(f"{s}:{n}" for s, n in sorted(counts.items())))

        outcome = asyncio.run(post_plan(url, plan.deliveries, rate, on_sent=on_sent))
    return summarise(url, seed, plan.expected, outcome)
