"""Chat exports as they come out of the apps: find the format, read it, write a manifest.

``import_export`` takes a WhatsApp export (``.zip``, folder, or the ``.txt`` log), a Telegram
Desktop export (folder, ``.zip`` or ``result.json``), or a folder with today's two tables
(``voices.csv`` + ``messages.csv``), and returns manifest rows whose candidates come from
``plcli.data.chat.build_candidates``. Voice notes are extracted (or copied) once into a media
folder beside the manifest, because every later stage reads audio by path, many times; the
measurement behind this choice is in docs/chat-import.md.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from plcli.data import chat
from plcli.data.exports import telegram, whatsapp
from plcli.data.exports.base import FolderMedia, ParsedChat, ZipMedia
from plcli.data.manifest import Problem
from plcli.errors import DataError, UserError

FORMATS = ("auto", "whatsapp", "telegram", "tables")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
_WHATSAPP_HINT = "a WhatsApp '_chat.txt' or 'WhatsApp Chat with NAME.txt'"


class _Export:
    """Where an export's log and media are: a zip, or a folder on disk."""

    def __init__(self, format: str, log: str, data: bytes, media, chat_hint: str | None,
                 folder: Path | None = None, zf: zipfile.ZipFile | None = None):
        self.format, self.log, self.data, self.media = format, log, data, media
        self.chat_hint, self.folder, self.zf = chat_hint, folder, zf


def _tables(folder: Path) -> dict[str, Path]:
    found = {}
    for name in ("voices", "messages", "labels"):
        for suffix in TABLE_SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                found[name] = folder / f"{name}{suffix}"
                break
    return found if {"voices", "messages"} <= found.keys() else {}


def _pick_log(names: list[str], where: str, head: Callable[[str], bytes]) -> str | None:
    """The WhatsApp log among the .txt files of an export: the shallowest, and if there are several,
    the one whose first line is a WhatsApp message line (else '_chat.txt' or 'WhatsApp ... .txt')."""
    logs = [n for n in names if n.lower().endswith(".txt")]
    if not logs:
        return None
    depth = min(n.count("/") for n in logs)
    logs = [n for n in logs if n.count("/") == depth]
    if len(logs) > 1:
        looks = [n for n in logs if whatsapp.looks_like_log(_first_line(head(n)))]
        preferred = [n for n in logs if PurePosixPath(n).name == "_chat.txt" or "whatsapp" in n.lower()]
        logs = looks if len(looks) == 1 else preferred
        if len(logs) != 1:
            raise DataError(f"{where}:0: cannot tell which .txt file is the chat log: give its path "
                            "(or unpack the export and point at the log)")
    return logs[0]


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8-sig", "replace")
    return next((s for s in text.splitlines() if s.strip()), "")


MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")


def is_manifest(path: str | os.PathLike) -> bool:
    """A manifest file (JSONL or CSV) rather than a chat export (zip, folder, .txt log, result.json)."""
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES and not Path(path).is_dir()


def export_rows(export: str | os.PathLike, manifest: Path, media_dir: Path, key: Callable[[str], str],
                log: Callable[[str], None]) -> list[dict]:
    """``import_export`` with its defaults for a manifest at ``manifest`` (not written), and one log line."""
    if not Path(export).exists():
        raise UserError(f"{export}: no such manifest or chat export")
    rows, summary = import_export(export, out_path=manifest, key=key, media_dir=media_dir)
    skipped = len(summary.get("skipped") or [])
    log(f"{export}: {len(rows)} voice notes, {sum(bool(r['candidates']) for r in rows)} with candidates"
        + (f", {skipped} skipped (unreadable or missing)" if skipped else ""))
    return rows


def manifest_from_export(export: str | os.PathLike, out: Path, key: Callable[[str], str],
                         log: Callable[[str], None]) -> Path:
    """``plcli data from-chat`` on a chat export: its manifest beside ``out`` (``OUT.manifest.jsonl``,
    voice notes in ``OUT-media``), with every voice note, typed or not."""
    path = out.with_name(out.stem + ".manifest.jsonl")
    chat.write_manifest(export_rows(export, path, out.with_name(out.stem + "-media"), key, log), path)
    return path


def detect_format(path: str | os.PathLike) -> str:
    """'whatsapp', 'telegram' or 'tables' for an export path; ``DataError`` when it is none of them."""
    return _open(Path(path), "auto").format


def _open(path: Path, format: str) -> _Export:
    if not path.exists():
        raise DataError(f"{path}:0: not found")
    want = None if format == "auto" else format
    if path.is_dir():
        if want in (None, "telegram") and (path / "result.json").is_file():
            return _Export("telegram", str(path / "result.json"), (path / "result.json").read_bytes(),
                           FolderMedia(path), path.name, folder=path)
        if want in (None, "tables") and _tables(path):
            return _Export("tables", str(path), b"", None, path.name, folder=path)
        if want in (None, "whatsapp"):
            log = _pick_log(sorted(p.name for p in path.iterdir() if p.is_file()), str(path),
                            lambda n: _head(path / n))
            if log is not None:
                return _Export("whatsapp", str(path / log), (path / log).read_bytes(), FolderMedia(path),
                               path.name, folder=path)
        raise DataError(f"{path}:0: no {want or 'chat'} export in this folder (expected {_WHATSAPP_HINT}, "
                        "a Telegram 'result.json', or voices.csv + messages.csv)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if path.suffix.lower() == ".zip" or magic == b"PK\x03\x04":
        return _open_zip(path, want)
    if path.suffix.lower() == ".json" and want in (None, "telegram"):
        return _Export("telegram", str(path), path.read_bytes(), FolderMedia(path.parent), path.parent.name,
                       folder=path.parent)
    if path.suffix.lower() == ".txt" and want in (None, "whatsapp"):
        return _Export("whatsapp", str(path), path.read_bytes(), FolderMedia(path.parent), None,
                       folder=path.parent)
    raise DataError(f"{path}:0: not a chat export (expected a WhatsApp .zip, folder or .txt log, a Telegram "
                    "result.json or export folder, or a folder with voices.csv + messages.csv; "
                    "two tables go in --voices and --messages)")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(1024)


def _open_zip(path: Path, want: str | None) -> _Export:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(
            f"{path}:0: truncated or corrupt zip ({e}): copy or download the export again"
        ) from None
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    results = sorted((n for n in names if PurePosixPath(n).name == "result.json"), key=lambda n: n.count("/"))
    try:
        if want in (None, "telegram") and results:
            member = results[0]
            root = member[: -len("result.json")]
            return _Export("telegram", f"{path}/{member}", zf.read(member), ZipMedia(zf, root), path.stem,
                           zf=zf)
        if want in (None, "whatsapp"):
            member = _pick_log(names, str(path), lambda n: zf.open(n).read(1024))
            if member is not None:
                root = member[: len(member) - len(PurePosixPath(member).name)]
                return _Export("whatsapp", f"{path}/{member}", zf.read(member), ZipMedia(zf, root), path.stem,
                               zf=zf)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(
            f"{path}:0: truncated or corrupt zip ({e}): copy or download the export again"
        ) from None
    zf.close()
    raise DataError(f"{path}:0: no {want or 'chat'} export in this zip (expected {_WHATSAPP_HINT} "
                    "or a Telegram 'result.json')")


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{file}:{line}: not valid UTF-8 (is this the exported chat file?)") from None


def read_export(path: str | os.PathLike, format: str = "auto", date_order: str = "auto") -> ParsedChat:
    """Parse a WhatsApp or Telegram export without touching its media (see ``import_export``)."""
    export = _open(Path(path), format)
    if export.format == "tables":
        raise UserError(f"{path} holds voice and message tables, not a chat app's export")
    try:
        return _parse(export, date_order)
    finally:
        if export.zf is not None:
            export.zf.close()


def _parse(export: _Export, date_order: str) -> ParsedChat:
    text = _decode(export.data, export.log)
    if export.format == "telegram":
        return telegram.parse_result(text, export.log)
    name = whatsapp.chat_name(export.log, export.chat_hint)
    return whatsapp.parse_log(text, export.log, lambda n: export.media.size(n) is not None, date_order, name)


def _safe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not p.is_absolute() and ".." not in p.parts


def import_export(
    path: str | os.PathLike,
    *,
    out_path: str | os.PathLike,
    format: str = "auto",
    date_order: str = "auto",
    labels_path: str | os.PathLike | None = None,
    k: int = 10,
    window_seconds: float | None = None,
    same_author: bool = False,
    key: Callable[[str], str] = str.strip,
    media_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Manifest rows for a chat export as the app wrote it, and a summary.

    The voice notes are extracted from a zip (or copied from a folder outside the manifest's
    folder) once into ``media_dir`` (default: ``OUT-media`` beside the manifest); a copy already
    there with the same content is kept. Paths in the rows are relative to the manifest's folder.
    A voice note that is missing from the export, empty, or does not decode is skipped and listed
    in ``summary["skipped"]`` as ``file:line: reason``; one without a following text is kept with
    ``"candidates": []``. The options are ``from_chat``'s (``labels_path`` ids are the voice
    notes' file names without extension). Raises ``DataError`` (``file:line: reason``) for an
    export that cannot be read and ``UserError`` for invalid options. Nothing is written but the
    media (see ``chat.write_manifest``).
    """
    _check_import_options(format, date_order, k, window_seconds)
    export = _open(Path(path), format)
    if export.format == "tables":
        tables = _tables(export.folder)
        rows, summary = chat.from_chat(tables["voices"], tables["messages"],
                                       labels_path or tables.get("labels"), out_path=out_path, k=k,
                                       window_seconds=window_seconds, same_author=same_author, key=key)
        return rows, {"format": "tables", **summary}
    try:
        parsed = _parse(export, date_order)
        out_dir = Path(os.path.abspath(Path(out_path).parent))
        media_dir = (
            Path(os.path.abspath(media_dir)) if media_dir else out_dir / f"{Path(out_path).stem}-media"
        )
        voices, skipped, copied = _materialise(export, parsed, out_dir, media_dir, progress)
        unnamed = _unnamed_voice_files(export, parsed)
    finally:
        if export.zf is not None:
            export.zf.close()
    _check_voices(parsed, voices, skipped, same_author)
    labels = chat.read_labels(labels_path, {v.id for v in voices}) if labels_path is not None else {}
    cands = chat.build_candidates(voices, parsed.messages, k, window_seconds, same_author, key)
    rows, warnings, n_outside = chat.manifest_rows(voices, cands, labels, str(labels_path), out_dir, key)
    if unnamed:
        warnings.append(f"{len(unnamed)} voice note file(s) in the export are not named in {parsed.file} and "
                        f"were not imported, e.g. {unnamed[0]}")
    if parsed.counts.get("media_omitted") and parsed.format.startswith("whatsapp"):
        warnings.append(f"{parsed.file}: {parsed.counts['media_omitted']} media file(s) omitted from the "
                        "export; voice notes among them cannot be imported (export with media to "
                        "include them)")
    summary = _summary(parsed, voices, skipped, copied, media_dir, rows, cands, labels, n_outside, warnings)
    return rows, summary


def _check_import_options(format: str, date_order: str, k: int, window_seconds: float | None) -> None:
    """``UserError`` for an unknown ``--format`` or ``--date-order``, or invalid candidate options."""
    if format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if date_order not in whatsapp.DATE_ORDERS:
        raise UserError(f"--date-order must be one of {', '.join(whatsapp.DATE_ORDERS)}, got {date_order!r}")
    chat.check_candidate_options(k, window_seconds)


def _check_voices(parsed: ParsedChat, voices, skipped, same_author: bool) -> None:
    """``DataError`` when no voice note was imported, or one lacks the author ``--same-author`` needs."""
    if not voices:
        if not skipped:
            raise DataError(f"{parsed.file}:0: no voice notes in this chat")
        raise DataError(f"no voice note could be imported from {parsed.file}:\n"
                        + "\n".join(f"  {p}" for p in sorted(skipped, key=lambda p: p.line)[:50]))
    if same_author and any(v.author is None for v in voices):
        raise DataError(f"{parsed.file}:0: --same-author needs an author for every voice note")


def _summary(parsed: ParsedChat, voices, skipped, copied: int, media_dir: Path, rows: list[dict], cands,
             labels: dict, n_outside: int, warnings: list[str]) -> dict:
    """``import_export``'s summary: counts, authors, candidate-set sizes, skipped notes, warnings."""
    authors: dict[str, dict[str, int]] = {}
    for v in voices:
        authors.setdefault(v.author or "?", {"voice_notes": 0, "messages": 0})["voice_notes"] += 1
    for m in parsed.messages:
        authors.setdefault(m.author or "?", {"voice_notes": 0, "messages": 0})["messages"] += 1
    n_with = sum(1 for c in cands if c)
    counts = {
        "voice_notes": len(voices) + len(skipped),
        "imported": len(rows),
        "skipped": len(skipped),
        "with_candidates": n_with,
        "without_candidates": len(rows) - n_with,
        "messages": len(parsed.messages),
        **parsed.counts,
        "labelled": len(labels),
        "label_not_in_candidates": n_outside,
        "extracted": copied,
    }
    summary = {
        "format": parsed.format,
        "log": parsed.file,
        "chat": parsed.chat,
        "media_dir": str(media_dir),
        "counts": counts,
        "authors": dict(sorted(authors.items(), key=lambda kv: -sum(kv[1].values()))),
        "candidate_set_sizes": dict(sorted(Counter(len(c) for c in cands).items())),
        "skipped": [str(p) for p in sorted(skipped, key=lambda p: p.line)],
        "notes": parsed.notes,
        "warnings": warnings,
    }
    return summary


def _unnamed_voice_files(export: _Export, parsed: ParsedChat) -> list[str]:
    """Voice-note files in the export that its log never names (a cut-off log, a merged folder)."""
    if parsed.format == "telegram":
        files = [
            n for n in export.media.names("voice_messages/") if n.lower().endswith((".ogg", ".opus", ".oga"))
        ]
    else:
        files = [n for n in export.media.names() if n.lower().endswith(whatsapp.VOICE_SUFFIXES)]
    named = {v.name for v in parsed.voices}
    return [n for n in files if n not in named]


def _materialise(export: _Export, parsed: ParsedChat, out_dir: Path, media_dir: Path,
                 progress: Callable[[int, int], None] | None) -> tuple[list[chat.Voice], list[Problem], int]:
    """Put every importable voice note where the manifest can point at it; skip the others, with reasons."""
    from plcli.data.validate import check_audio_file

    skipped = list(parsed.skipped)
    todo, first = [], {}
    for note in parsed.voices:
        vid = PurePosixPath(note.name.replace("\\", "/")).stem
        size = export.media.size(note.name) if _safe(note.name) else None
        if not _safe(note.name):
            reason = f"unsafe media path {note.name!r}"
        elif size is None:
            reason = f"voice note {note.name} is named in the log but missing from the export"
        elif size == 0:
            reason = f"voice note {note.name} is empty (0 bytes)"
        elif vid in first:
            reason = f"voice note {note.name} is named twice (first on line {first[vid]})"
        else:
            first[vid] = note.line
            todo.append((vid, note))
            continue
        skipped.append(Problem(parsed.file, note.line, reason))
    copied = 0
    in_place = export.folder is not None and Path(os.path.abspath(export.folder)).is_relative_to(out_dir)
    ready = []
    for i, (vid, note) in enumerate(todo):
        if progress is not None:
            progress(i, len(todo))
        if in_place:
            ready.append((vid, note, export.media.path(note.name)))
            continue
        audio = media_dir / note.name
        try:
            copied += export.media.copy_to(note.name, audio)
        except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as e:
            skipped.append(Problem(parsed.file, note.line, f"voice note {note.name} cannot be extracted "
                                                           f"(truncated or corrupt zip: {e})"))
            continue
        ready.append((vid, note, audio))
    # the same decode check as plcli validate, so the manifest passes it
    with ThreadPoolExecutor(4) as ex:
        checks = list(ex.map(check_audio_file, [audio for _, _, audio in ready]))
    voices = []
    for (vid, note, audio), (_, problem, _) in zip(ready, checks):
        if problem:
            skipped.append(Problem(parsed.file, note.line, f"voice note {note.name}: {problem}"))
            continue
        voices.append(chat.Voice(id=vid, audio=audio, time=note.time, author=note.author,
                                 timestamp=note.timestamp,
                                 extra={"source": f"{PurePosixPath(parsed.file).name}:{note.line}",
                                        **({"chat": parsed.chat} if parsed.chat else {})}, line=note.line))
    if progress is not None:
        progress(len(todo), len(todo))
    return voices, skipped, copied
