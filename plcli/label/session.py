"""One labelling session: the rows still to ask about, in order, and the answers given so far.

Thread-safe (the HTTP server answers requests in threads). Every answer goes to the ``LabelStore``
before the session moves on; skips live here only, so a skipped row comes back at the end of the
queue and in the next session.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from plcli.data.manifest import Row, read_manifest
from plcli.errors import DataError, UserError
from plcli.label import select
from plcli.label.store import LabelStore


class AnswerError(Exception):
    """A request the session refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.status = status


def read_rows(manifests: list[str], log: Callable[[str], None]) -> list[Row]:
    """The manifests' well-formed rows, first of each id; malformed rows are logged and left out."""
    rows, seen = [], set()
    for m in manifests:
        got, problems, _ = read_manifest(m)
        fatal = [p for p in problems if p.line == 0]
        if fatal:
            raise DataError(f"{fatal[0].file}: {fatal[0].reason}")
        for p in problems:
            log(f"warning: {p} (row left out)")
        for r in got:
            if r.id in seen:
                log(f"warning: {r.where}: id {r.id!r} appears again; only its first row is labelled")
                continue
            seen.add(r.id)
            rows.append(r)
    return rows


class LabelSession:
    """Rows to label (those with candidates), the order to ask them in, and the labels file."""

    def __init__(self, rows: list[Row], store: LabelStore, normalizer, order: list[str] | None = None,
                 reasons: dict[str, str] | None = None, log: Callable[[str], None] = print):
        self.rows = {r.id: r for r in rows if r.candidates}
        self.store, self.normalizer, self.log = store, normalizer, log
        self.reasons = reasons or {}
        self.notices: list[str] = []
        self.missing: set[str] = set()
        for r in self.rows.values():
            if not self.done(r.id) and not Path(r.audio).is_file():
                self.leave_out(r.id, f"audio file not found: {r.audio}")
        self.queue = deque(i for i in (order if order is not None else self.rows) if self.asks(i))
        self.undo_stack: list[str] = []
        self.skipped = 0
        self.lock = threading.Lock()

    def leave_out(self, rid: str, why: str) -> None:
        """Never ask about ``rid`` in this session (its audio is gone or unreadable); say so."""
        self.missing.add(rid)
        self.notices.append(f"{rid}: {why}")
        self.log(f"warning: {self.rows[rid].where}: {rid}: {why} (not asked)")
        if rid in getattr(self, "queue", ()):
            self.queue.remove(rid)

    def done(self, rid: str) -> bool:
        return self.rows[rid].label is not None or self.store.has(rid)

    def asks(self, rid: str) -> bool:
        return rid in self.rows and not self.done(rid) and rid not in self.missing

    # -- what the page sees ------------------------------------------------------------------
    def state(self) -> dict:
        with self.lock:
            return self._state()

    def _state(self) -> dict:
        labelled = sum(self.done(i) for i in self.rows)
        item = None
        if self.queue:
            r = self.rows[self.queue[0]]
            item = {"id": r.id, "candidates": r.candidates, "reason": self.reasons.get(r.id),
                    "speaker": r.speaker, "timestamp": r.extra.get("timestamp"), "audio": Path(r.audio).name}
        return {"item": item, "notices": self.notices, "can_undo": bool(self.undo_stack),
                "progress": {"labelled": labelled, "rows": len(self.rows), "left": len(self.queue),
                             "session": len(self.undo_stack), "skipped": self.skipped,
                             "missing_audio": len(self.missing)}}

    def audio_path(self, rid: str) -> Path:
        r = self.rows.get(rid)
        if r is None:
            raise AnswerError(f"no recording with id {rid!r} to label", 404)
        if not Path(r.audio).is_file():
            raise AnswerError(f"{rid}: audio file not found: {r.audio}; skip it (s)", 404)
        return Path(r.audio)

    # -- answers -------------------------------------------------------------------------------
    def _pending(self, rid) -> Row:
        if not isinstance(rid, str) or rid not in self.rows:
            raise AnswerError(f"no recording with id {rid!r} to label", 404)
        if self.done(rid):
            raise AnswerError(f"{rid} is labelled already; undo (u) to change it", 409)
        if rid in self.missing:
            raise AnswerError(f"{rid}: its audio file is missing, so it is not asked", 409)
        return self.rows[rid]

    def answer(self, rid, label=None, none_of_these: bool = False) -> dict:
        """Record a candidate (compared by the label normaliser) or "none of these"."""
        with self.lock:
            row = self._pending(rid)
            if none_of_these == (label is not None):
                raise AnswerError("give either a label or none_of_these")
            if label is not None:
                if not isinstance(label, str):
                    raise AnswerError(f"label must be text, got {label!r}")
                key = self.normalizer(label)
                match = [c for c in row.candidates if self.normalizer(c) == key]
                if not match:
                    raise AnswerError(f"{label!r} is not one of {rid}'s candidates; nothing was written")
                label = match[0]
            self.store.write(rid, label, none_of_these=none_of_these)
            self.log(f"{rid}: " + ("none of these" if none_of_these else repr(label)))
            self.undo_stack.append(rid)
            if rid in self.queue:
                self.queue.remove(rid)
            return self._state()

    def skip(self, rid) -> dict:
        """Ask ``rid`` again after the others (this session only)."""
        with self.lock:
            self._pending(rid)
            if rid in self.queue:
                self.queue.remove(rid)
            self.queue.append(rid)
            self.skipped += 1
            return self._state()

    def undo(self) -> dict:
        """Drop this session's latest answer; its row is asked next."""
        with self.lock:
            while self.undo_stack and not self.store.has(self.undo_stack[-1]):
                self.undo_stack.pop()
            if not self.undo_stack:
                raise AnswerError("nothing to undo in this session")
            rid = self.undo_stack.pop()
            self.store.write(rid, undo=True)
            self.log(f"{rid}: answer undone")
            if self.asks(rid):
                self.queue.appendleft(rid)
            return self._state()


def _as_manifest(source: str, labels, log) -> str:
    """``source`` itself, or for a chat export its manifest beside the labels file (``LABELS.manifest.jsonl``;
    the ids are the voice notes' file names, as ``plcli train`` gives them)."""
    from plcli.data.exports import is_manifest, manifest_from_export
    from plcli.data.labels import LabelNormalizer

    if is_manifest(source):
        return source
    return str(manifest_from_export(source, labels, LabelNormalizer(), log))


def build_session(cfg, store: LabelStore, log: Callable[[str], None]) -> LabelSession:
    """Rows, asking order and reasons for ``cfg`` (a ``LabelPageConfig``)."""
    from plcli.data.labels import LabelNormalizer

    rows = read_rows([_as_manifest(m, store.path, log) for m in cfg.manifests], log)
    if not any(r.candidates for r in rows):
        raise UserError("no row of the manifest has candidates; there is nothing to choose from")
    session = LabelSession(rows, store, LabelNormalizer(), log=log)
    if cfg.model:
        from plcli.data.audio import audio_info

        for rid in list(session.queue):
            try:
                audio_info(session.rows[rid].audio)
            except DataError as e:
                session.leave_out(rid, str(e))
    todo = [session.rows[i] for i in session.queue]
    if cfg.model:
        log(f"scoring {len(todo)} unlabelled recording(s) with {cfg.model}")
        probs, session.normalizer = select.model_probs(cfg.model, [r.audio for r in todo],
                                                       [r.candidates for r in todo], cfg.cache_dir,
                                                       cfg.batch_size, log)
        order, reasons = select.model_order([r.candidates for r in todo], probs, session.normalizer,
                                            cfg.uncertainty)
        session.reasons = {todo[i].id: reasons[i] for i in range(len(todo))}
    else:
        order = select.diverse_order([select.group_of(r) for r in todo], cfg.seed)
    session.queue = deque(todo[i].id for i in order)
    return session
