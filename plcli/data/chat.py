"""Build a manifest from a chat export (``plcli data from-chat``).

A chat export is two tables: the voice messages (``audio``, optional ``id``, ``timestamp``,
optional ``author``) and the text messages (``timestamp``, ``text``, optional ``author``), each CSV
or JSON Lines. People usually type what they just said, so the candidate set of a voice message
sent at time ``t`` is the first ``k`` distinct texts sent strictly after ``t``, in time order. An
optional third table (``id``, ``label``) gives exact labels. See docs/chat-import.md. Exports as
the chat apps write them (WhatsApp, Telegram) are read by ``plcli.data.exports`` into the same
``Voice``/``Message`` records.

Every problem in every table is collected as ``file:line: reason`` before a single ``DataError``
is raised, so one run shows everything that needs fixing.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from plcli.data.tables import Problem, Table, parse_table
from plcli.errors import DataError, UserError
from plcli.io import atomic_write_jsonl

VOICE_COLUMNS = ("id", "audio", "timestamp", "author")
MESSAGE_COLUMNS = ("timestamp", "text", "author")
LABEL_COLUMNS = ("id", "label")
# manifest fields that from_chat computes itself; a voice column with one of these names would be
# silently overwritten, so it is rejected instead
RESERVED = ("candidates", "label", "speaker")
MAX_SHOWN_PROBLEMS = 50
# unix seconds beyond this (year ~5138) are almost surely milliseconds
MAX_UNIX_SECONDS = 1e11

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SEPARATORS = re.compile(r"[\s,]*")


@dataclass
class Voice:
    """One voice message; ``time`` is unix seconds (naive ISO timestamps are taken as UTC)."""

    id: str
    audio: Path
    time: float
    author: str | None = None
    timestamp: Any = None  # as written in the table
    extra: dict = field(default_factory=dict)
    line: int = 0


@dataclass
class Message:
    """One text message; ``time`` is unix seconds."""

    time: float
    text: str
    author: str | None = None
    line: int = 0


def _raise(problems: list[Problem], what: str) -> None:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN_PROBLEMS])
    more = len(problems) - MAX_SHOWN_PROBLEMS
    if more > 0:
        shown += f"\n  ... and {more} more"
    err = DataError(f"{what}: {len(problems)} problem(s)\n{shown}")
    err.problems = problems  # type: ignore[attr-defined]
    raise err


def _read(path: str | os.PathLike, known: Sequence[str], problems: list[Problem]) -> Table | None:
    """The table at ``path`` (``plcli.data.tables``), or None when the file cannot be read."""
    file = os.fspath(path)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.append(Problem(file, 0, "file not found"))
        return None
    except IsADirectoryError:
        problems.append(Problem(file, 0, "is a folder, expected a .csv or .jsonl file"))
        return None
    except OSError as e:
        problems.append(Problem(file, 0, f"cannot read: {e.strerror or e}"))
        return None
    table = parse_table(file, path, data, known, problems)
    if table.is_csv and table.header is None:
        problems.append(Problem(file, 0, "empty file: expected a header row"))
    return table


def read_table(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """Read a CSV (header row) or JSON Lines table into ``(line number, row)`` pairs.

    The format follows the extension (``.csv``/``.tsv`` or ``.jsonl``/``.json``/``.ndjson``; other
    extensions are sniffed). A UTF-8 BOM, CRLF line ends and blank lines are tolerated; a ``.json``
    file may also hold one JSON array of objects. Known column names (``id``, ``audio``,
    ``timestamp``, ``author``, ``text``, ``label``) match case-insensitively. CSV values stay
    strings; the line number is where the row starts. Raises ``DataError`` listing every problem.
    """
    problems: list[Problem] = []
    table = _read(path, VOICE_COLUMNS + MESSAGE_COLUMNS + LABEL_COLUMNS, problems)
    if problems:
        _raise(problems, f"cannot read {os.fspath(path)}")
    assert table is not None
    return table.rows


def parse_timestamp(value: Any) -> tuple[float, bool]:
    """Parse an ISO 8601 string or unix seconds (number or numeric string) to unix seconds.

    Returns ``(seconds, has_timezone)``; ISO timestamps without a timezone are taken as UTC, unix
    seconds count as having one. Raises ``ValueError`` with a reason.
    """
    if value is None:
        raise ValueError("missing timestamp")
    if isinstance(value, bool):
        raise ValueError(f"unparseable timestamp {value!r}")
    if isinstance(value, str):
        s = value.strip()
        if not s:
            raise ValueError("empty timestamp")
        if _NUMBER.fullmatch(s):
            value = float(s)
        else:
            if s[-1] in "Zz":
                s = s[:-1] + "+00:00"
            try:
                dt = datetime.fromisoformat(s)
            except ValueError:
                raise ValueError(
                    f"unparseable timestamp {value!r} (expected ISO 8601 like 2024-05-01T12:30:00 "
                    "or unix seconds)"
                ) from None
            aware = dt.tzinfo is not None
            if not aware:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.timestamp(), aware
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"unparseable timestamp {value!r}")
        if abs(seconds) > MAX_UNIX_SECONDS:
            raise ValueError(f"timestamp {value!r} out of range (milliseconds? expected unix seconds)")
        return seconds, True
    raise ValueError(f"unparseable timestamp {value!r}")


def _text(value: Any) -> str | None:
    """A cell as text: strings as they are, numbers converted, null/absent as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    return None


class _Columns:
    """Required/optional column checks: once at the header for CSV, per row for JSON Lines."""

    def __init__(self, table: Table, problems: list[Problem]):
        self.table, self.problems = table, problems
        self.missing: set[str] = set()

    def require(self, name: str, why: str = "") -> bool:
        t = self.table
        if t.header is not None and name not in t.header:
            self.problems.append(Problem(t.file, t.header_line, f"missing column {name!r}{why}"))
            self.missing.add(name)
            return False
        if t.header is None and t.rows and not any(name in row for _, row in t.rows):
            self.problems.append(Problem(t.file, t.rows[0][0], f"missing field {name!r} in every row{why}"))
            self.missing.add(name)
            return False
        return True


def _parse_voices(
    table: Table, same_author: bool, problems: list[Problem], stamps: list[bool]
) -> list[Voice]:
    """The voice table's rows; one pass with every per-row check in order (columns, audio, timestamp,
    author, id, duplicates), so each problem is reported against its line exactly once."""
    cols, ok = _voice_columns(table, same_author, problems)
    if not table.rows:
        if not any(p.file == table.file for p in problems):
            problems.append(Problem(table.file, 0, "no voice messages"))
        return []
    base = Path(os.path.abspath(Path(table.file).parent))
    voices, first_line = [], {}
    for line, row in table.rows:
        errors: list[str] = []
        audio = _voice_audio(row, cols, errors)
        if "timestamp" not in cols.missing:
            try:
                time, aware = parse_timestamp(row.get("timestamp"))
                stamps.append(aware)
            except ValueError as e:
                errors.append(str(e))
        author = _text(row.get("author"))
        author = author.strip() if author and author.strip() else None
        if same_author and author is None and "author" not in cols.missing:
            errors.append("empty author (needed by --same-author)")
        vid = _voice_id(row, audio, line, first_line, errors)
        if table.header is None:
            errors += [f"field {name!r} is reserved" for name in RESERVED if name in row]
        problems.extend(Problem(table.file, line, e, row) for e in errors)
        if errors or not ok:
            continue
        # CSV has no null: an empty cell in an extra column means "no value"
        extra = {k: v for k, v in row.items()
                 if k not in VOICE_COLUMNS and not (table.header is not None and v.strip() == "")}
        voices.append(Voice(id=vid, audio=Path(os.path.normpath(base / Path(audio.strip()).expanduser())),
                            time=time, author=author, timestamp=row["timestamp"], extra=extra, line=line))
    return voices


def _voice_columns(table: Table, same_author: bool, problems: list[Problem]) -> tuple[_Columns, bool]:
    """The voice table's column checks; False when a row cannot become a voice whatever it holds."""
    cols = _Columns(table, problems)
    ok = cols.require("audio") & cols.require("timestamp")
    if same_author:
        ok &= cols.require("author", " (needed by --same-author)")
    for name in RESERVED:
        if table.header is not None and name in table.header:
            hint = "use 'author'" if name == "speaker" else "give exact labels in the labels table"
            problems.append(Problem(table.file, table.header_line, f"column {name!r} is reserved: {hint}"))
            ok = False
    return cols, ok


def _voice_audio(row: dict, cols: _Columns, errors: list[str]) -> str | None:
    """The row's audio cell as text; what is wrong with it goes to ``errors``."""
    audio = _text(row.get("audio"))
    if "audio" in cols.missing:
        pass
    elif row.get("audio") is None:
        errors.append("missing audio path")
    elif audio is None:
        errors.append(f"'audio' must be a path string, got {type(row['audio']).__name__}")
    elif not audio.strip():
        errors.append("empty audio path")
    return audio


def _voice_id(row: dict, audio: str | None, line: int, first_line: dict[str, int],
              errors: list[str]) -> str | None:
    """The row's id (default: the audio file's stem), noted in ``first_line``; a duplicate goes to
    ``errors``."""
    vid = _text(row.get("id"))
    if row.get("id") is not None and vid is None:
        errors.append(f"'id' must be a string, got {type(row['id']).__name__}")
    if not vid or not vid.strip():
        vid = Path(audio.strip()).stem if audio and audio.strip() else None
    else:
        vid = vid.strip()
    if vid is not None:
        if vid in first_line:
            errors.append(f"duplicate id {vid!r} (first on line {first_line[vid]})")
        else:
            first_line[vid] = line
    return vid


def _parse_messages(
    table: Table, same_author: bool, problems: list[Problem], stamps: list[bool]
) -> list[Message]:
    cols = _Columns(table, problems)
    ok = cols.require("timestamp") & cols.require("text")
    if same_author:
        ok &= cols.require("author", " (needed by --same-author)")
    if not ok:
        return []
    messages = []
    for line, row in table.rows:
        try:
            time, aware = parse_timestamp(row.get("timestamp"))
        except ValueError as e:
            problems.append(Problem(table.file, line, str(e), row))
            continue
        stamps.append(aware)
        if "text" not in row:
            problems.append(Problem(table.file, line, "missing field 'text'", row))
            continue
        text = _text(row["text"])
        if text is None and row["text"] is not None:
            problems.append(
                Problem(table.file, line, f"'text' must be a string, got {type(row['text']).__name__}")
            )
            continue
        author = _text(row.get("author"))
        author = author.strip() if author and author.strip() else None
        messages.append(Message(time=time, text=text or "", author=author, line=line))
    return messages


def _parse_labels(table: Table, ids: Container[str], problems: list[Problem]) -> dict[str, tuple[str, int]]:
    cols = _Columns(table, problems)
    if not (cols.require("id") & cols.require("label")):
        return {}
    labels: dict[str, tuple[str, int]] = {}
    for line, row in table.rows:
        vid, label = _text(row.get("id")), _text(row.get("label"))
        vid = vid.strip() if vid else ""
        if not vid:
            problems.append(Problem(table.file, line, "empty id", row))
        elif not label or not label.strip():
            problems.append(Problem(table.file, line, f"empty label for id {vid!r}", row))
        elif vid not in ids:
            problems.append(Problem(table.file, line, f"unknown id {vid!r} (not in the voice table)", row))
        elif vid in labels:
            problems.append(
                Problem(
                    table.file, line, f"second label for id {vid!r} (first on line {labels[vid][1]})", row
                )
            )
        else:
            labels[vid] = (label, line)
    return labels


def read_labels(path: str | os.PathLike, ids: Container[str]) -> dict[str, tuple[str, int]]:
    """The exact-labels table (``id``, ``label``) as ``{id: (label, line)}``, checked against ``ids``.

    Raises ``DataError`` listing every problem as ``file:line: reason``.
    """
    problems: list[Problem] = []
    table = _read(path, LABEL_COLUMNS, problems)
    labels = _parse_labels(table, ids, problems) if table is not None else {}
    if problems:
        _raise(problems, "invalid labels table")
    return labels


def build_candidates(
    voices: Sequence[Voice],
    messages: Sequence[Message],
    k: int = 10,
    window_seconds: float | None = None,
    same_author: bool = False,
    key: Callable[[str], str] = str.strip,
    skip_empty: bool = True,
) -> list[list[str]]:
    """Candidate texts for each voice message, in the order of ``voices``.

    For a voice message at time ``t`` the candidates are the first ``k`` distinct texts among the
    messages with ``t < time`` (strictly after: a message sent in the same second as the recording
    is not a candidate), and ``time <= t + window_seconds`` when a window is given, in time order;
    messages with equal times keep their order in ``messages``. Two texts are the same when
    ``key`` maps them to the same string; the first text of each key is kept as written. With
    ``same_author`` only messages whose author equals the voice message's author count (a voice
    message without an author gets none). With ``skip_empty`` messages whose text is empty or
    whitespace are ignored.

    Messages are sorted once and each voice message starts with a binary search, so the cost is
    O((M + V) log M) plus the scan over the candidates (and repeats of them) after each voice.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if window_seconds is not None and not window_seconds > 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    msgs = [m for m in messages if not (skip_empty and not m.text.strip())]
    msgs.sort(key=lambda m: m.time)  # stable: equal times keep file order
    keys = [key(m.text) for m in msgs]

    # one time-sorted stream per author (or a single stream): (times, indices into msgs)
    streams: dict[str | None, tuple[list[float], list[int]]] = {}
    for i, m in enumerate(msgs):
        name = m.author if same_author else None
        times, idx = streams.setdefault(name, ([], []))
        times.append(m.time)
        idx.append(i)

    out = []
    for v in voices:
        stream = streams.get(v.author if same_author else None)
        if stream is None or (same_author and v.author is None):
            out.append([])
            continue
        times, idx = stream
        start = bisect.bisect_right(times, v.time)
        stop = len(times) if window_seconds is None else bisect.bisect_right(times, v.time + window_seconds)
        out.append([msgs[i].text for i in first_distinct(keys, (idx[j] for j in range(start, stop)), k)])
    return out


def first_distinct(keys: Sequence[str], positions: Iterable[int], k: int) -> list[int]:
    """The first ``k`` of ``positions`` with distinct ``keys[position]`` (the first of each key):
    a candidate set is the first ``k`` distinct texts after a voice message."""
    seen: set[str] = set()
    out: list[int] = []
    for i in positions:
        if keys[i] not in seen:
            seen.add(keys[i])
            out.append(i)
            if len(out) == k:
                break
    return out


def _relative(audio: Path, folder: Path) -> str:
    try:
        return audio.relative_to(folder).as_posix()
    except ValueError:
        return str(audio)


def check_candidate_options(k: int, window_seconds: float | None) -> None:
    """``UserError`` for a ``--k`` below 1 or a ``--window`` that is not a positive number."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if window_seconds is not None and not window_seconds > 0:
        raise UserError(f"--window must be a positive number of seconds, got {window_seconds}")


def manifest_rows(
    voices: Sequence[Voice],
    cands: Sequence[list[str]],
    labels: dict[str, tuple[str, int]],
    labels_file: str,
    out_dir: Path,
    key: Callable[[str], str],
) -> tuple[list[dict], list[str], int]:
    """Manifest rows of voice messages and their candidate sets (``from_chat`` documents the columns),
    the warnings for labels outside their candidates, and how many there were."""
    rows, warnings = [], []
    n_outside = 0
    for v, c in zip(voices, cands, strict=True):
        row: dict[str, Any] = {"id": v.id, "audio": _relative(v.audio, out_dir), "candidates": c}
        if v.id in labels:
            label, line = labels[v.id]
            row["label"] = label
            if c and key(label) not in {key(x) for x in c}:
                n_outside += 1
                warnings.append(
                    f"{labels_file}:{line}: label {label!r} for id {v.id!r} is not among its "
                    f"{len(c)} candidates"
                )
        if v.author is not None:
            row["speaker"] = v.author
        row["timestamp"] = v.timestamp
        for name, value in v.extra.items():
            row.setdefault(name, value)
        rows.append(row)
    return rows, warnings, n_outside


def from_chat(
    voices_path: str | os.PathLike,
    messages_path: str | os.PathLike,
    labels_path: str | os.PathLike | None = None,
    *,
    out_path: str | os.PathLike,
    k: int = 10,
    window_seconds: float | None = None,
    same_author: bool = False,
    key: Callable[[str], str] = str.strip,
    skip_empty: bool = True,
) -> tuple[list[dict], dict]:
    """Manifest rows for a chat export, and a summary ``{"counts": {...}, "warnings": [...]}``.

    Rows follow the voice table's order: ``id``, ``audio`` (relative to ``out_path``'s folder when
    the file lies under it, absolute otherwise), ``candidates`` (see ``build_candidates``; empty
    when no message qualifies: such voice messages are kept, unlabelled), ``label`` when the labels
    table gives one, ``speaker`` (the author, when known), ``timestamp`` as written, then the voice
    table's other columns. A label that is not among its row's candidates is a warning, not an
    error. Nothing is written (see ``write_manifest``). Raises ``DataError`` listing every problem
    in every table as ``file:line: reason``, and ``UserError`` for invalid options.
    """
    check_candidate_options(k, window_seconds)
    stamps: list[bool] = []  # per timestamp: did it carry a timezone
    vtable, mtable, ltable, voices, messages, labels = _read_export(
        voices_path, messages_path, labels_path, same_author, stamps
    )
    cands = build_candidates(voices, messages, k, window_seconds, same_author, key, skip_empty)
    out_dir = Path(os.path.abspath(Path(out_path).parent))
    labels_file = ltable.file if ltable is not None else ""
    rows, warnings, n_label_outside = manifest_rows(voices, cands, labels, labels_file, out_dir, key)

    if mtable is not None and not mtable.rows:
        warnings.append(f"{mtable.file}: no messages: every voice message is unlabelled")
    if any(stamps) and not all(stamps):
        warnings.append(
            "some timestamps have a timezone and some do not; those without are taken as UTC, "
            "which may misorder voice and text messages"
        )
    missing = [v for v in voices if not v.audio.exists()]
    if missing:
        warnings.append(
            f"{len(missing)} audio file(s) not found, e.g. {vtable.file}:{missing[0].line}: "
            f"{missing[0].audio}"
        )
    n_with = sum(1 for c in cands if c)
    counts = {
        "voices": len(voices),
        "messages": len(messages),
        "messages_used": sum(1 for m in messages if not (skip_empty and not m.text.strip())),
        "with_candidates": n_with,
        "without_candidates": len(voices) - n_with,
        "labelled": len(labels),
        "label_not_in_candidates": n_label_outside,
        "mean_candidates": round(sum(len(c) for c in cands) / len(cands), 3) if cands else 0.0,
    }
    return rows, {"counts": counts, "warnings": warnings}


def _read_export(voices_path, messages_path, labels_path, same_author: bool, stamps: list[bool]):
    """The three tables and what they hold: (tables..., voices, messages, labels); ``DataError``
    listing every problem in every table."""
    problems: list[Problem] = []
    vtable = _read(voices_path, VOICE_COLUMNS, problems)
    mtable = _read(messages_path, MESSAGE_COLUMNS, problems)
    ltable = _read(labels_path, LABEL_COLUMNS, problems) if labels_path is not None else None
    voices = _parse_voices(vtable, same_author, problems, stamps) if vtable else []
    messages = _parse_messages(mtable, same_author, problems, stamps) if mtable else []
    by_id = {v.id: v for v in voices}
    if ltable is not None and vtable is not None:
        # labels can only be checked against ids once the voice table is clean
        vproblems = any(p.file == vtable.file for p in problems)
        if vproblems:
            by_id = _all_ids(vtable)
        labels = _parse_labels(ltable, by_id, problems)
    else:
        labels = {}
    if problems:
        _raise(problems, "invalid chat export")
    return vtable, mtable, ltable, voices, messages, labels


def _all_ids(table: Table) -> dict[str, Any]:
    """Every id the voice table names, even on rows with other problems (for the label check)."""
    ids: dict[str, Any] = {}
    for _, row in table.rows:
        vid = _text(row.get("id"))
        if not vid or not vid.strip():
            audio = _text(row.get("audio"))
            vid = Path(audio.strip()).stem if audio and audio.strip() else None
        if vid:
            ids[vid.strip()] = None
    return ids


def write_manifest(rows: list[dict], out_path: str | os.PathLike) -> None:
    """Write manifest rows as JSON Lines, atomically."""
    atomic_write_jsonl(out_path, rows)
