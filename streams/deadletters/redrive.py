"""``deadletters redrive``: ingest's dead letters that today's rules accept, appended to the webhook log once.

Pure part, :func:`plan`: each selected letter of ingest (a body it rejected; not the processor's or the
sink's, whose record is already in the log) is parsed again by :func:`streams.events.normalise` with the
current settings (``ENX_ALLOWED_APP_IDS``, the parser of this version). One that now parses becomes the
``WebhookEvent`` it would have been: the same ``event_id`` (from the payload), its original
``received_at`` and source. It is skipped when the ledger says it was dealt with, when its ``event_id`` is
already in the log (accepted since, or appended by a run that stopped before writing the ledger), or when
an earlier letter of this run has the same ``event_id`` (EnableX retried the rejected body).

I/O part, :func:`run`: read the letters and the ledger; scan the webhook log for the candidates' event ids
and for ``enx-redrive-of`` headers; append (key ``{app_id}/{conf_num}``, header
``enx-redrive-of: <dead letter id>``); then write one ledger record per letter appended or found in the log.
Appending before recording makes a crash between the two harmless: the next run finds the event in the
log. Run one redrive at a time (two at once could both append; every projection deduplicates by event id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.avro import default_codec
from streams.config import Settings, split_list
from streams.deadletters import topics
from streams.deadletters.select import Filter
from streams.events import Rejection, normalise, session_key

REDRIVE_HEADER = "enx-redrive-of"
BATCH = 500

APPEND = "append"
IN_LOG = "in_log"                  # its event id is in the log already
REDRIVEN_BEFORE = "redriven_before"
DUPLICATE = "duplicate"            # an earlier letter of this run has the same event id
STILL_REJECTED = "still_rejected"


@dataclass(frozen=True)
class Decision:
    letter_id: str
    action: str
    event: dict[str, Any] | None = None
    reason: str = ""


@dataclass
class Summary:
    selected: int = 0
    actions: Counter = field(default_factory=Counter)
    still_rejected: Counter = field(default_factory=Counter)
    appended: list[str] = field(default_factory=list)   # dead letter ids appended by this run

    def describe(self, dry_run: bool) -> str:
        verb = "would append" if dry_run else "appended"
        parts = [f"{self.selected} dead letter(s) of ingest selected", f"{verb} {self.actions[APPEND]}",
                 f"already in the log {self.actions[IN_LOG]}", f"redriven before {self.actions[REDRIVEN_BEFORE]}",
                 f"duplicates {self.actions[DUPLICATE]}", f"still rejected {self.actions[STILL_REJECTED]}"]
        text = ", ".join(parts)
        if self.still_rejected:
            text += " (" + ", ".join(f"{code} {n}" for code, n in self.still_rejected.most_common()) + ")"
        return text


def reparse(letter: Mapping[str, Any], allowed_app_ids: frozenset[str] | None) -> dict[str, Any] | Rejection:
    """The ``WebhookEvent`` today's rules make of the letter's body, or why they still reject it."""
    try:
        return normalise(letter["raw"] or b"", int(letter["received_at"]), letter.get("source"),
                         allowed_app_ids=allowed_app_ids)
    except Rejection as rejection:
        return rejection
    except Exception as exc:  # noqa: BLE001 - a parser bug on one body must not stop the others' redrive
        return Rejection("parser_error", f"{type(exc).__name__}: {exc}")


def candidates(letters: Iterable[Mapping[str, Any]], ledger: Mapping[str, Any],
               allowed_app_ids: frozenset[str] | None) -> list[Decision]:
    """First pass, without the log: redriven before, still rejected, or a candidate (action APPEND); in the
    order ingest received the letters, so a session's events are appended in their arrival order and, of
    two letters of one event, the first received is the one appended."""
    out = []
    for letter in sorted(letters, key=lambda x: int(x["received_at"])):
        if letter["id"] in ledger:
            out.append(Decision(letter["id"], REDRIVEN_BEFORE))
            continue
        result = reparse(letter, allowed_app_ids)
        if isinstance(result, Rejection):
            out.append(Decision(letter["id"], STILL_REJECTED, reason=result.code))
        else:
            out.append(Decision(letter["id"], APPEND, event=result))
    return out


def against_log(first: Iterable[Decision], event_ids_in_log: set[str], redriven_in_log: set[str]) -> list[Decision]:
    """Second pass: a candidate whose letter or event id is in the log is not appended; nor is a second
    letter of the same event id."""
    seen: set[str] = set()
    out = []
    for d in first:
        if d.action != APPEND or d.event is None:
            out.append(d)
        elif d.letter_id in redriven_in_log or d.event["event_id"] in event_ids_in_log:
            out.append(Decision(d.letter_id, IN_LOG, event=d.event))
        elif d.event["event_id"] in seen:
            out.append(Decision(d.letter_id, DUPLICATE, event=d.event))
        else:
            seen.add(d.event["event_id"])
            out.append(d)
    return out


def ledger_record(decision: Decision, now_ms: int, appended_to: str | None) -> dict[str, Any]:
    return {"deadletter_id": decision.letter_id, "event_id": decision.event["event_id"] if decision.event else None,
            "outcome": "appended" if decision.action == APPEND else decision.action,
            "redriven_at": now_ms, "appended_to": appended_to}


def _event_ids_in_log(settings: Settings, wanted: Mapping[str, bytes], letter_ids: set[str],
                      progress: topics.Progress | None) -> tuple[set[str], set[str]]:
    """Which of the ``wanted`` event ids (-> the key ingest gives it), and which of ``letter_ids`` (by
    ``enx-redrive-of``), are in the log. Only records under a wanted key are decoded: ingest and redrive
    key every event by its session, so an event id is never under another key."""
    codec = default_codec()
    keys = set(wanted.values())
    found: set[str] = set()
    redriven: set[str] = set()

    def handle(record: topics.Record) -> None:
        for name, value in record.headers:
            if name == REDRIVE_HEADER and value.decode("utf-8", "replace") in letter_ids:
                redriven.add(value.decode("utf-8", "replace"))
        if record.key not in keys:
            return
        try:
            event_id = codec.decode(record.value or b"", "WebhookEvent")["event_id"]
        except Exception:  # noqa: BLE001 - the sink dead-letters such records; here they hold no id
            return
        if event_id in wanted:
            found.add(event_id)

    asyncio.run(topics.scan(settings, settings.topic("webhooks"), handle, progress))
    return found, redriven


def run(settings: Settings, selection: Filter, *, dry_run: bool, echo: Callable[[str], None],
        progress: topics.Progress | None = None, clock: Callable[[], float] = time.time) -> Summary:
    """Redrive the selected dead letters of ingest; returns what was done (``echo`` says it as it goes)."""
    selection = dataclasses.replace(selection, origin="ingest")
    allowed = frozenset(split_list(settings.allowed_app_ids)) or None
    chosen, undecodable = asyncio.run(topics.read_dead_letters(settings, progress, keep=selection.matches))
    if undecodable:
        echo(f"warning: {undecodable} record(s) of {settings.topic('deadletter')} are not DeadLetters; skipped")
    ledger = asyncio.run(topics.read_ledger(settings))
    first = candidates(chosen, ledger, allowed)
    wanted = {d.event["event_id"]: session_key(d.event).encode() for d in first if d.action == APPEND and d.event}
    found, redriven = (set(), set())
    if wanted:
        echo(f"checking {settings.topic('webhooks')} for the {len(wanted)} event id(s) that now parse")
        found, redriven = _event_ids_in_log(settings, wanted, {d.letter_id for d in first if d.action == APPEND},
                                            progress)
    decisions = against_log(first, found, redriven)
    summary = Summary(selected=len(chosen), actions=Counter(d.action for d in decisions),
                      still_rejected=Counter(d.reason for d in decisions if d.action == STILL_REJECTED))
    to_append = [d for d in decisions if d.action == APPEND]
    to_record = [d for d in decisions if d.action in (APPEND, IN_LOG, DUPLICATE)]
    if dry_run:
        for d in to_append:
            echo(f"would append {d.event['event_id']} ({d.event['type']} {session_key(d.event)}) "  # type: ignore[index]
                 f"from dead letter {d.letter_id}")
        return summary
    if to_record:
        asyncio.run(_write(settings, to_append, to_record, summary, echo, clock))
    return summary


async def _write(settings: Settings, to_append: list[Decision], to_record: list[Decision], summary: Summary,
                 echo: Callable[[str], None], clock: Callable[[], float]) -> None:
    codec = default_codec()
    await topics.ensure_ledger(settings)
    where: dict[str, str] = {}
    async with topics.Appender(settings) as out:
        for start in range(0, len(to_append), BATCH):
            batch = to_append[start:start + BATCH]
            coords = await out.send_all(settings.topic("webhooks"), [
                (session_key(d.event).encode(), codec.encode("WebhookEvent", d.event),  # type: ignore[arg-type]
                 {REDRIVE_HEADER: d.letter_id.encode()}) for d in batch])
            where.update({d.letter_id: c for d, c in zip(batch, coords)})
            summary.appended += [d.letter_id for d in batch]
            echo(f"appended {start + len(batch)}/{len(to_append)} to {settings.topic('webhooks')}")
        now_ms = int(clock() * 1000)
        await out.send_all(topics.ledger_topic(settings), [
            (d.letter_id.encode(), json.dumps(ledger_record(d, now_ms, where.get(d.letter_id))).encode(), {})
            for d in to_record])
