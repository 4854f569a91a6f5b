"""The labels file: append-only JSON Lines, one answer per line, safe to kill at any moment.

Records (each with a UTC ``time``)::

    {"id": "m-001", "label": "On my way"}      # the recording says this candidate
    {"id": "m-002", "none_of_these": true}     # its transcript is none of its candidates
    {"id": "m-001", "undo": true}              # drops m-001's latest answer

Every record is one ``os.write`` on an ``O_APPEND`` descriptor, then ``fsync``: a kill leaves at most
a cut-off last line, which the reader ignores with a warning. Replaying the file gives each id's
current answer (the last one not undone).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from plcli.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second process is not detected there
    fcntl = None  # type: ignore[assignment]

NONE_OF_THESE = None  # the answer value of a "none of these" record


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


def _record_answer(obj) -> tuple[str, str, str | None] | None:
    """(id, kind, label) of a valid record, kind 'label', 'none' or 'undo'; None if malformed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        return None
    kinds = [k for k in ("label", "none_of_these", "undo") if k in obj]
    if len(kinds) != 1:
        return None
    if kinds == ["label"]:
        return (obj["id"], "label", obj["label"]) if isinstance(obj["label"], str) else None
    if obj[kinds[0]] is not True:
        return None
    return obj["id"], "none" if kinds == ["none_of_these"] else "undo", None


def replay(
    lines: Iterable[str], where: str = "labels", warn: Callable[[str], None] = _warn
) -> dict[str, list]:
    """Each id's answers in order, undone ones dropped: {id: [label or None, ...]}."""
    history: dict[str, list] = {}
    lines = list(lines)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = _record_answer(json.loads(line))
        except json.JSONDecodeError:
            cut = n == len(lines) and not line.endswith("\n")
            warn(
                f"{where}:{n}: "
                + ("the last line is cut off (a killed process?)" if cut else "not valid JSON")
                + "; ignored"
            )
            continue
        if rec is None:
            warn(f"{where}:{n}: not a label record; ignored")
            continue
        rid, kind, label = rec
        if kind == "undo":
            if history.get(rid):
                history[rid].pop()
        else:
            history.setdefault(rid, []).append(label)
    return {k: v for k, v in history.items() if v}


def _lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text.splitlines(keepends=True)


def read_labels(path: str | os.PathLike, warn: Callable[[str], None] = _warn) -> dict[str, str | None]:
    """{id: label} from a labels file, ``None`` for "none of these"; a missing file holds none."""
    p = Path(path)
    if not p.exists():
        return {}
    if p.is_dir():
        raise UserError(f"labels file {p} is a folder")
    return {k: v[-1] for k, v in replay(_lines(p), str(p), warn).items()}


def apply_labels(rows: list, labels: dict[str, str | None]) -> list:
    """The rows (manifest ``Row`` objects or dicts) with the labels file's answers: a label becomes the
    row's exact label; "none of these" drops any label and sets ``none_of_these``."""
    out = []
    for row in rows:
        rid = str(row["id"] if isinstance(row, dict) else row.id)
        if rid not in labels:
            out.append(row)
            continue
        label = labels[rid]
        if isinstance(row, dict):
            new = {k: v for k, v in row.items() if k not in ("label", "none_of_these")}
            new.update({"label": label} if label is not None else {"none_of_these": True})
        else:
            extra = {k: v for k, v in row.extra.items() if k != "none_of_these"}
            if label is None:
                extra["none_of_these"] = True
            new = dataclasses.replace(row, label=label, extra=extra)
        out.append(new)
    return out


class LabelStore:
    """The labels file held by one process: an exclusive lock on ``FILE.lock`` for its lifetime."""

    def __init__(self, path: str | os.PathLike, warn: Callable[[str], None] = _warn):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"labels file {self.path} is a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock)
                raise UserError(
                    f"{self.path} is in use by another `plcli label` (lock {self.lock_path}); "
                    "finish that one first, or give another --labels file"
                ) from None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        lines = _lines(self.path)
        # after a cut-off last line the next record starts on a line of its own
        self._newline_first = bool(lines) and not lines[-1].endswith("\n")
        self.history = replay(lines, str(self.path), warn)

    def answer(self, rid: str) -> str | None:
        return self.history[rid][-1]

    def has(self, rid: str) -> bool:
        return bool(self.history.get(rid))

    def write(
        self, rid: str, label: str | None = None, *, none_of_these: bool = False, undo: bool = False
    ) -> None:
        """Append one record and fsync it before returning."""
        if undo and not self.has(rid):
            raise ValueError(f"{rid} has no answer to undo")
        rec: dict = {"id": rid}
        if undo:
            rec["undo"] = True
        elif none_of_these:
            rec["none_of_these"] = True
        else:
            rec["label"] = label
        rec["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        data = (("\n" if self._newline_first else "") + json.dumps(rec, ensure_ascii=False) + "\n").encode()
        if os.write(self._fd, data) != len(data):
            self._newline_first = True
            raise OSError(f"short write to {self.path} (disk full?)")
        os.fsync(self._fd)
        self._newline_first = False
        if undo:
            self.history[rid].pop()
            if not self.history[rid]:
                del self.history[rid]
        else:
            self.history.setdefault(rid, []).append(None if none_of_these else label)

    def close(self) -> None:
        for fd in (self._fd, self._lock):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
