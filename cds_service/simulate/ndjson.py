"""Read a FHIR Bulk Data export: which files hold which resource type, split into partitions, line by line.

An export is a folder of NDJSON files, one resource per line, one type per file (``Patient.ndjson``,
``Observation.003.ndjson.gz`` …), optionally with the ``$export`` completion manifest naming each file's
type. A large plain file is cut into byte ranges at line boundaries (one Dask partition each) with the line
number each range starts at, so every bad line is reported as ``file:line`` however the file was split. A
gzipped file is one partition (gzip cannot be entered in the middle).

Bad lines never stop a read: a truncated or non-JSON line, a line that is not an object, a resource of
another type than its file, or a resource without a patient reference is a :class:`LineProblem`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

BLOCK_BYTES = 32 * 1024 * 1024  # a plain file is split into partitions of about this size
MANIFEST = "manifest.json"
_TYPE_IN_NAME = re.compile(r"^(?:\d+[._-])?([A-Z][A-Za-z]+)")
_SCAN_CHUNK = 4 * 1024 * 1024


class ExportError(Exception):
    """The export cannot be used at all (no folder, no NDJSON, no Patient or medication data)."""


@dataclass(frozen=True, slots=True)
class LineProblem:
    """One bad line: where it is and what is wrong (never its content: it may be PHI)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class Part:
    """One partition: a byte range of one file, the resource type its lines must have, its first line number."""

    path: str
    resource_type: str
    start: int = 0
    end: int = -1  # -1: to the end of the file
    first_line: int = 1

    @property
    def name(self) -> str:
        return Path(self.path).name


def export_files(folder: Path) -> dict[str, list[Path]]:
    """Resource type → files, from the completion manifest when there is one, else from the file names."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a folder (expected a FHIR Bulk Data export: Patient.ndjson, …)")
    found: dict[str, list[Path]] = {}
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            outputs = json.loads(manifest.read_text(encoding="utf-8")).get("output") or []
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
            raise ExportError(f"{manifest}: not a Bulk Data manifest ({exc})") from exc
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                continue
            path = folder / Path(str(item.get("url", ""))).name  # an absolute URL: the file beside the manifest
            if path.is_file():
                found.setdefault(item["type"], []).append(path)
    if not found:
        for path in sorted([*folder.glob("*.ndjson"), *folder.glob("*.ndjson.gz")]):
            match = _TYPE_IN_NAME.match(path.name)
            if match:
                found.setdefault(match.group(1), []).append(path)
    if not found:
        raise ExportError(f"{folder}: no *.ndjson or *.ndjson.gz files (expected a FHIR Bulk Data export)")
    return {rtype: sorted(paths) for rtype, paths in sorted(found.items())}


def partitions(path: Path, resource_type: str, block_bytes: int = BLOCK_BYTES) -> list[Part]:
    """Cut one file into line-aligned byte ranges of about ``block_bytes`` (a gzipped file: one range)."""
    size = path.stat().st_size
    if path.name.endswith(".gz") or size <= block_bytes:
        return [Part(str(path), resource_type)]
    parts: list[Part] = []
    start, line = 0, 1
    with path.open("rb") as handle:
        while start < size:
            target = start + block_bytes
            if target >= size:
                parts.append(Part(str(path), resource_type, start, -1, line))
                break
            handle.seek(target)
            rest = handle.readline()
            end = target + len(rest)
            parts.append(Part(str(path), resource_type, start, end, line))
            line += _count_newlines(handle, start, end)
            start = end
    return parts


def _count_newlines(handle: Any, start: int, end: int) -> int:
    handle.seek(start)
    count, remaining = 0, end - start
    while remaining > 0:
        chunk = handle.read(min(_SCAN_CHUNK, remaining))
        if not chunk:
            break
        count += chunk.count(b"\n")
        remaining -= len(chunk)
    return count


def _lines(part: Part) -> Iterator[tuple[int, bytes]]:
    path = Path(part.path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            yield from enumerate(handle, start=part.first_line)
        return
    with path.open("rb") as handle:
        handle.seek(part.start)
        number = part.first_line
        position = part.start
        for raw in handle:
            if part.end >= 0 and position >= part.end:
                break
            yield number, raw
            number += 1
            position += len(raw)


def read_part(part: Part) -> Iterator[tuple[int, dict[str, Any] | LineProblem]]:
    """(line number, resource) for every good line, (line number, problem) for every bad one; blank lines skipped."""
    try:
        for number, raw in _lines(part):
            if not raw.strip():
                continue
            try:
                resource = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield number, LineProblem(part.name, number, "not valid JSON (truncated or corrupt line); skipped")
                continue
            if not isinstance(resource, dict):
                yield number, LineProblem(part.name, number, "not a JSON object; skipped")
                continue
            found = resource.get("resourceType")
            if found != part.resource_type:
                yield number, LineProblem(
                    part.name, number,
                    f"resourceType {found!r} in a {part.resource_type} file; skipped")
                continue
            yield number, resource
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        # A damaged gzip stream or a read error: what was read counts, the rest is one reported problem.
        yield 0, LineProblem(part.name, 0, f"file could not be read to the end ({type(exc).__name__}: {exc})")


def patient_of(resource: dict[str, Any]) -> str | None:
    """The id of the patient a resource belongs to (its own id for a Patient), from subject/patient."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and rid else None
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            text = ref["reference"].rstrip("/")
            parts = text.split("/")
            if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
                return parts[-1]
    return None
