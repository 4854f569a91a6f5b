"""Manifests: JSON Lines or CSV, one recording per row.

Columns: ``id`` (unique string), ``audio`` (path; relative paths resolve against the manifest's
folder), ``candidates`` (list of strings, may be empty or absent), ``label`` (optional exact label),
optional ``speaker`` / ``group``; any other column is kept and passed through.

Parsing (``plcli.data.tables``, the reader chat exports use too) never stops at the first problem:
every malformed line becomes a ``Problem`` with its ``file:line`` and a reason, and the rest of the
file is still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plcli.data.tables import Problem, parse_table

KNOWN = ("id", "audio", "candidates", "label", "speaker", "group")


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


def _records(path: Path, problems: list[Problem]) -> list[tuple[int, dict]]:
    """The file's records (``plcli.data.tables``); CSV cells as manifest values: ``candidates``
    parsed as a JSON array, an empty ``label``/``speaker``/``group`` cell taken as absent."""
    table = parse_table(str(path), path, path.read_bytes(), KNOWN, problems)
    if not table.is_csv:
        return table.rows
    records = []
    for line_no, obj in table.rows:
        cands = obj.get("candidates")
        if isinstance(cands, str):
            try:
                obj["candidates"] = json.loads(cands) if cands.strip() else []
            except json.JSONDecodeError:
                problems.append(Problem(str(path), line_no,
                                        'candidates must be a JSON array, e.g. ["yes", "no"]', obj))
                continue
        for k in ("label", "speaker", "group"):
            if obj.get(k) == "":
                del obj[k]  # empty optional cell == absent
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
        records = _records(path, problems)
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
    records = _records(path, problems)
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
