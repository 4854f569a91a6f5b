"""One reader for every table plcli reads: manifests, truth files and chat exports.

A table is CSV (a header row, then one row per record) or JSON (JSON Lines, or one JSON array of
objects). The format follows the extension (``.csv``/``.tsv``; ``.jsonl``/``.json``/``.ndjson``),
other extensions are sniffed from the first character. Tolerated: a UTF-8 BOM, CRLF line ends,
blank lines, ``;`` or tab separators (spreadsheet exports in some locales), quoted CSV fields
spanning lines, trailing empty cells, header names in another case or with spaces around them
(for the ``known`` columns). Reading never stops at the first problem where it can go on: a line
that is not UTF-8 or not valid JSON becomes a ``Problem`` with its ``file:line`` and a reason, and
the other lines are still read. CSV values stay strings; each row's line number is where it starts.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SEPARATORS = re.compile(r"[\s,]*")


@dataclass
class Problem:
    """One problem with one line of a table (line 0: the whole file)."""

    file: str
    line: int
    reason: str
    raw: Any = None  # the row as read (dict) or the raw text, for the rejects file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason, "row": self.raw}


@dataclass
class Table:
    """The records of one file: ``(line, row)`` pairs, and for CSV the header."""

    file: str
    rows: list[tuple[int, dict]]
    header: list[str] | None  # CSV header (canonical names); None for JSON or an empty CSV
    header_line: int = 1
    is_csv: bool = False


def parse_table(file: str, path: Path, data: bytes, known: Sequence[str], problems: list[Problem]) -> Table:
    """The records of ``data`` (the bytes of ``path``, named ``file`` in problems); appends to ``problems``.

    Names in ``known`` match case-insensitively and ignoring surrounding spaces (they come out lower-case).
    """
    text = _decode(file, data, problems)
    if _is_json(path, text):
        return Table(file, _read_json(text, file, known, problems), None)
    rows, header, header_line = _read_csv(text, path, file, known, problems)
    return Table(file, rows, header, header_line, is_csv=True)


def canonical(name: str, known: Sequence[str]) -> str:
    """Known column names match case-insensitively and ignoring surrounding spaces."""
    stripped = name.strip()
    return stripped.lower() if stripped.lower() in known else stripped


def _decode(file: str, data: bytes, problems: list[Problem]) -> str:
    """UTF-8 text of ``data`` line by line: an undecodable line is reported and left empty, so the
    line numbers of the rest stay right."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problems.append(Problem(file, i,
                                    f"not valid UTF-8 at column {e.start + 1}: re-save the file as UTF-8",
                                    raw.rstrip(b"\r").decode("utf-8", "replace")))
            out.append("")
    return "\n".join(out)


def _is_json(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return True
    if suffix in (".csv", ".tsv"):
        return False
    return text.lstrip().startswith(("{", "["))


def _read_json(text: str, file: str, known: Sequence[str], problems: list[Problem]) -> list[tuple[int, dict]]:
    objs = (_json_array(text, file, problems) if text.lstrip().startswith("[")
            else _json_lines(text, file, problems))
    rows = []
    for line, obj, raw in objs:
        if not isinstance(obj, dict):
            problems.append(Problem(file, line, f"expected a JSON object, got {type(obj).__name__}", raw))
            continue
        rows.append((line, {canonical(k, known): v for k, v in obj.items()}))
    return rows


def _json_lines(text: str, file: str, problems: list[Problem]) -> list[tuple[int, Any, Any]]:
    objs = []
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            objs.append((i, json.loads(line), line))
        except json.JSONDecodeError as e:
            problems.append(Problem(file, i,
                                    f"malformed JSON: {e.msg} at column {e.colno}{_json_hint(line, e)}",
                                    line))
    return objs


def _json_array(text: str, file: str, problems: list[Problem]) -> list[tuple[int, Any, Any]]:
    """A JSON array instead of JSON Lines: its elements, each with the line it starts on."""
    objs: list[tuple[int, Any, Any]] = []
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    while True:
        m = _SEPARATORS.match(text, pos)
        line += text.count("\n", pos, m.end())
        pos = m.end()
        if pos >= len(text) or text[pos] == "]":
            return objs
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            problems.append(Problem(file, e.lineno, f"malformed JSON: {e.msg} at column {e.colno}"))
            return []
        objs.append((line, obj, obj))
        line += text.count("\n", pos, end)
        pos = end


def _json_hint(text: str, e: json.JSONDecodeError) -> str:
    """A guess at the usual culprit of a JSON syntax error, for the message."""
    if e.msg == "Extra data" and text[e.pos:].strip() == ",":
        return " (trailing comma after the object?)"
    if re.search(r",\s*[}\]]", text):
        return " (trailing comma?)"
    if "double quotes" in e.msg and "'" in text:
        return " (JSON needs double quotes)"
    return ""


def _read_csv(
    text: str, path: Path, file: str, known: Sequence[str], problems: list[Problem]
) -> tuple[list[tuple[int, dict]], list[str] | None, int]:
    first = next((s for s in text.splitlines() if s.strip()), "")
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:  # exports from spreadsheets in some locales use ';'
        delimiter = max(",;\t", key=first.count) if first else ","
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 1
    rows: list[tuple[int, dict]] = []
    prev = 0
    while True:
        start = prev + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(Problem(file, start, f"malformed CSV: {e}"))
            break
        prev = reader.line_num
        if not any(v.strip() for v in values):
            continue  # blank line (or only separators)
        if header is None:
            header, header_line = _header(values, known, file, start, problems), start
            continue
        if len(values) > len(header) and not any(v.strip() for v in values[len(header):]):
            values = values[: len(header)]  # trailing separators: empty cells past the last column
        if len(values) != len(header):
            raw = "\n".join(lines[start - 1 : prev]).rstrip("\r")
            problems.append(Problem(file, start,
                                    f"malformed CSV: {len(values)} fields, header has {len(header)}", raw))
            continue
        # columns without a name (a trailing separator in the header) are dropped
        rows.append((start, {k: v for k, v in zip(header, values, strict=True) if k}))
    return rows, header, header_line


def _header(values: list[str], known: Sequence[str], file: str, line: int,
            problems: list[Problem]) -> list[str]:
    header = [canonical(v, known) for v in values]
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            problems.append(Problem(file, line, f"duplicate column {name!r}"))
        seen.add(name)
    return header
