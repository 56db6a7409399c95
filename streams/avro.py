"""Avro single-object encoding, with writer schemas resolved by fingerprint from ``schemas/avro/``.

A value is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema (little-endian, as the
Java implementation writes it) + the Avro binary body. Every schema ever written lives in
``schemas/avro/`` (the current one per record name at the top, earlier ones under ``history/``), so a
record written before a schema change stays readable: it is decoded with its writer schema and resolved
to the current reader schema (new fields take their defaults).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.schema_files import schemas_dir

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
SCHEMA_DIR = schemas_dir() / "avro"


class AvroError(ValueError):
    """A value that is not single-object Avro, or whose writer schema is unknown."""


def fingerprint_of(parsed_schema: dict) -> bytes:
    """The 8 header bytes for a parsed schema."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed_schema), "CRC-64-AVRO"))


class Codec:
    """Encodes with the current schema of each record name; decodes any known writer schema."""

    def __init__(self, schema_files: Iterable[Path], current: Iterable[Path]) -> None:
        self._writers: dict[bytes, dict] = {}
        self._current: dict[str, dict] = {}
        self._current_fp: dict[str, bytes] = {}
        self._plans: dict[tuple[bytes, str | None], tuple[dict, dict | None]] = {}  # see ``decode``
        for path in schema_files:
            parsed = fastavro.parse_schema(json.loads(Path(path).read_text()))
            self._writers[fingerprint_of(parsed)] = parsed
        for path in current:
            parsed = fastavro.parse_schema(json.loads(Path(path).read_text()))
            fp = fingerprint_of(parsed)
            self._writers[fp] = parsed
            name = parsed["name"].rsplit(".", 1)[-1]
            self._current[name] = parsed
            self._current_fp[name] = fp

    @classmethod
    def from_dir(cls, directory: Path = SCHEMA_DIR) -> Codec:
        """Current schemas are ``directory/*.avsc``; every ``.avsc`` below it is a known writer schema."""
        return cls(sorted(directory.rglob("*.avsc")), sorted(directory.glob("*.avsc")))

    @property
    def names(self) -> list[str]:
        return sorted(self._current)

    def schema(self, name: str) -> dict:
        return self._current[name]

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Single-object encoding of ``record`` with the current ``name`` schema."""
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(self._current_fp[name])
        fastavro.schemaless_writer(out, self._current[name], record)
        return out.getvalue()

    def decode(self, value: bytes, name: str | None = None) -> dict[str, Any]:
        """Decode with the writer schema named by the fingerprint, resolved to the current ``name`` schema
        (by default, the current schema with the writer's record name)."""
        if type(value) is not bytes:
            value = bytes(value)  # a memoryview or bytearray: its slices would not be hashable
        plan = self._plans.get((value[2:HEADER_LEN], name))  # (writer, reader or None when the same)
        if plan is None or value[:2] != MAGIC:
            plan = self._plan(value, name)
        try:
            return fastavro.schemaless_reader(io.BytesIO(value[HEADER_LEN:]), *plan)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad record
            raise AvroError(f"cannot decode the Avro body: {exc}") from exc

    def _plan(self, value: bytes, name: str | None) -> tuple[dict, dict | None]:
        """The writer and reader schemas for ``value`` read as ``name``, remembered per fingerprint and name."""
        if len(value) < HEADER_LEN or value[:2] != MAGIC:
            raise AvroError("not Avro single-object encoding (no C3 01 header)")
        fp = bytes(value[2:HEADER_LEN])
        writer = self._writers.get(fp)
        if writer is None:
            raise AvroError(f"unknown writer schema fingerprint {fp.hex()}; is schemas/avro/ missing a schema version?")
        reader = self._current.get(name or writer["name"].rsplit(".", 1)[-1], writer)
        plan = self._plans[(fp, name)] = (writer, None if reader is writer else reader)
        return plan

    def record_name(self, value: bytes) -> str:
        """The record name of a value's writer schema."""
        writer = self._writers.get(bytes(value[2:HEADER_LEN])) if value[:2] == MAGIC else None
        if writer is None:
            raise AvroError("not a known single-object Avro value")
        return writer["name"].rsplit(".", 1)[-1]


_default: Codec | None = None


def default_codec() -> Codec:
    """The codec over the repository's ``schemas/avro/`` (built once per process)."""
    global _default
    if _default is None:
        _default = Codec.from_dir()
    return _default
