"""Manifests: JSON Lines or CSV, one recording per row.

Columns: ``id`` (unique string), ``audio`` (path; relative paths resolve against the manifest's
folder), ``candidates`` (list of strings, may be empty or absent), ``label`` (optional exact label),
optional ``speaker`` / ``group``; any other column is kept and passed through.

Parsing never stops at the first problem: every malformed line becomes a ``Problem`` with its
``file:line`` and a reason, and the rest of the file is still read.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN = ("id", "audio", "candidates", "label", "speaker", "group")


@dataclass
class Problem:
    """One problem with one manifest line."""

    file: str
    line: int
    reason: str
    raw: Any = None  # the row as read (dict) or the raw text, for the rejects file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason, "row": self.raw}


@dataclass
class Row:
    """One recording. ``audio`` is resolved to an absolute path."""

    id: str
    audio: Path
    candidates: list[str] = field(default_factory=list)
    label: str | None = None
    speaker: str | None = None
    group: str | None = None
    extra: dict = field(default_factory=dict)
    file: str = ""
    line: int = 0

    @property
    def tier(self) -> str:
        """'exact', 'candidates' or 'unlabelled'."""
        if self.label is not None:
            return "exact"
        return "candidates" if self.candidates else "unlabelled"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self, relative_to: Path | None = None) -> dict:
        """The row as a manifest line; audio relative to ``relative_to`` where possible."""
        audio = self.audio
        if relative_to is not None:
            try:
                audio = audio.relative_to(relative_to.resolve())
            except ValueError:
                pass
        out: dict[str, Any] = {"id": self.id, "audio": str(audio), "candidates": list(self.candidates)}
        if self.label is not None:
            out["label"] = self.label
        if self.speaker is not None:
            out["speaker"] = self.speaker
        if self.group is not None:
            out["group"] = self.group
        out.update(self.extra)
        return out


def _decode_lines(path: Path, problems: list[Problem]) -> list[tuple[int, str]]:
    """Split a file into (line number, text) pairs: BOM and CRLF tolerated, bad UTF-8 reported."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out = []
    for i, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(str(path), i, f"not valid UTF-8 at column {e.start + 1}: re-save the file as UTF-8",
                                    raw.decode("utf-8", "replace")))
            continue
        out.append((i, text))
    return out


def _parse_jsonl(path: Path, problems: list[Problem]) -> list[tuple[int, dict]]:
    records = []
    for line_no, text in _decode_lines(path, problems):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(Problem(str(path), line_no,
                                    f"malformed JSON: {e.msg} at column {e.colno}{_json_hint(text, e)}", text))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(str(path), line_no, f"expected a JSON object, got {type(obj).__name__}", text))
            continue
        records.append((line_no, obj))
    return records


def _json_hint(text: str, e: json.JSONDecodeError) -> str:
    """A guess at the usual culprit of a JSON syntax error, for the message."""
    if e.msg == "Extra data" and text[e.pos:].strip() == ",":
        return " (trailing comma after the object?)"
    if re.search(r",\s*[}\]]", text):
        return " (trailing comma?)"
    if "double quotes" in e.msg and "'" in text:
        return " (JSON needs double quotes)"
    return ""


def _parse_csv(path: Path, problems: list[Problem]) -> list[tuple[int, dict]]:
    lines = _decode_lines(path, problems)
    lines = [(n, t) for n, t in lines if t.strip()]
    if not lines:
        return []
    header_line, header_text = lines[0]
    header = next(csv.reader([header_text]))
    header = [h.strip() for h in header]
    records = []
    for line_no, text in lines[1:]:
        try:
            values = next(csv.reader([text]))
        except csv.Error as e:
            problems.append(Problem(str(path), line_no, f"malformed CSV: {e}", text))
            continue
        if len(values) > len(header) and not any(v.strip() for v in values[len(header):]):
            values = values[:len(header)]  # trailing commas: empty cells past the last column
        if len(values) != len(header):
            problems.append(Problem(str(path), line_no,
                                    f"malformed CSV: {len(values)} fields, header has {len(header)}", text))
            continue
        obj: dict[str, Any] = {}
        for k, v in zip(header, values):
            if k == "" and not v.strip():
                continue  # a trailing comma in the header makes a nameless, empty column
            if k == "candidates":
                v = v.strip()
                if v == "":
                    obj[k] = []
                    continue
                try:
                    obj[k] = json.loads(v)
                except json.JSONDecodeError:
                    problems.append(Problem(str(path), line_no,
                                            'candidates must be a JSON array, e.g. ["yes", "no"]', text))
                    break
            elif k in ("label", "speaker", "group") and v == "":
                continue  # empty optional cell == absent
            else:
                obj[k] = v
        else:
            records.append((line_no, obj))
    return records


def _to_row(path: Path, line_no: int, obj: dict, problems: list[Problem]) -> Row | None:
    where = str(path)
    errors = []
    rid = obj.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        errors.append("missing field 'id'")
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        errors.append(f"'id' must be a string, got {type(rid).__name__}")
    audio = obj.get("audio")
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        errors.append("missing field 'audio'")
    elif not isinstance(audio, str):
        errors.append(f"'audio' must be a path string, got {type(audio).__name__}")
    cands = obj.get("candidates")
    if cands is None:
        cands = []
    if isinstance(cands, str):
        errors.append('candidates must be a list of strings, got a string (write ["a", "b"])')
    elif not isinstance(cands, list):
        errors.append(f"candidates must be a list of strings, got {type(cands).__name__}")
    elif not all(isinstance(c, str) for c in cands):
        errors.append("candidates must be a list of strings; found a non-string entry")
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        errors.append(f"'label' must be a string, got {type(label).__name__} {label!r}")
    for key in ("speaker", "group"):
        v = obj.get(key)
        if v is not None and not isinstance(v, (str, int)):
            errors.append(f"'{key}' must be a string, got {type(v).__name__}")
    if errors:
        for e in errors:
            problems.append(Problem(where, line_no, e, obj))
        return None
    audio_path = Path(audio).expanduser()
    if not audio_path.is_absolute():
        audio_path = path.parent.resolve() / audio_path
    return Row(
        id=str(rid),
        audio=audio_path,
        candidates=list(cands),
        label=label,
        speaker=None if obj.get("speaker") is None else str(obj["speaker"]),
        group=None if obj.get("group") is None else str(obj["group"]),
        extra={k: v for k, v in obj.items() if k not in KNOWN},
        file=where,
        line=line_no,
    )


def read_manifest(path: str | Path) -> tuple[list[Row], list[Problem], int]:
    """Parse one manifest. Returns (rows, problems, number of non-blank input rows).

    Structural problems only (JSON/CSV syntax, missing fields, wrong types); content checks
    (audio, duplicates, labels) are ``plcli.data.validate``'s job.
    """
    path = Path(path)
    problems: list[Problem] = []
    if not path.exists():
        return [], [Problem(str(path), 0, "manifest not found")], 0
    if path.is_dir():
        return [], [Problem(str(path), 0, "is a folder, expected a manifest file (.jsonl or .csv)")], 0
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            records = _parse_csv(path, problems)
        else:
            records = _parse_jsonl(path, problems)
    except OSError as e:
        return [], [Problem(str(path), 0, f"cannot read manifest: {e.strerror or e}")], 0
    n_input = len(records) + len({p.line for p in problems})
    rows = []
    for line_no, obj in records:
        row = _to_row(path, line_no, obj, problems)
        if row is not None:
            rows.append(row)
    return rows, problems, n_input


def read_truth(path: str | Path) -> dict[str, str]:
    """Truth file (JSONL or CSV with ``id`` and ``label``) -> {id: label}; problems raise ``DataError``."""
    from plcli.errors import DataError

    path = Path(path)
    problems: list[Problem] = []
    if not path.is_file():
        raise DataError(f"truth file not found: {path}")
    records = _parse_csv(path, problems) if path.suffix.lower() in (".csv", ".tsv") else _parse_jsonl(path, problems)
    out: dict[str, str] = {}
    for line, obj in records:
        rid, label = obj.get("id"), obj.get("label")
        if rid is None or not isinstance(label, str):
            problems.append(Problem(str(path), line, "truth rows need 'id' and a string 'label'", obj))
            continue
        out[str(rid)] = label
    if problems:
        raise DataError("problems in the truth file:\n" + "\n".join(str(p) for p in problems[:50]))
    return out
