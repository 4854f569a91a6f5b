"""WhatsApp "Export chat" logs (Android and iOS) as voice notes and text messages.

Android writes ``07/07/2022, 19:54 - Ann: text`` and ``... - Ann: PTT-20220707-WA0001.opus (file
attached)``; iOS writes ``[07/07/2022, 19:54:01] Ann: text`` and ``... Ann: <attached:
00000012-AUDIO-2022-07-07-19-54-01.opus>``. Dates follow the phone's locale (day-first,
month-first or year-first; ``/``, ``.`` or ``-``), clocks are 12- or 24-hour, and WhatsApp puts
invisible direction marks (U+200E, U+202A..U+202E) and narrow no-break spaces (U+202F) into the
lines. iOS starts every text WhatsApp generated itself (attachments, "image omitted", "This message
was deleted", the encryption notice) with U+200E, which is how those are told apart from typed text.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from pathlib import PurePosixPath

from plcli.data.chat import Message
from plcli.data.exports.base import ParsedChat, VoiceNote, tie_break
from plcli.data.manifest import Problem
from plcli.errors import DataError

DATE_ORDERS = ("auto", "dmy", "mdy", "ymd")

_BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_NO_BIDI = str.maketrans("", "", _BIDI)
_DATE = r"(\d{1,4})([./-])(\d{1,2})\2(\d{1,4})\.?"
_TIME = r"(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?(?:\s?([AaPp])\.?\s?[Mm]\.?)?"
# header, then "Author: text" (system lines have no author)
_MESSAGE = r"(?:([^:\n]{1,100}?): )?(.*)"
ANDROID = re.compile(rf"[{_BIDI}]*{_DATE},?\s{_TIME}\s[-\u2013]\s{_MESSAGE}", re.S)
IOS = re.compile(rf"[{_BIDI}]*\[{_DATE},?\s{_TIME}\]\s?{_MESSAGE}", re.S)

# Android: "NAME.ext (file attached)" in the phone's language; iOS: "<attached: NAME.ext>"
_ANDROID_ATTACHED = re.compile(r"(.+\.\w{1,8}) \(([^()]{3,40})\)")
_IOS_ATTACHED = re.compile(r"<[^<>:]{1,40}:\s?([^<>]+\.\w{1,8})>")
_ATTACHED_WORDS = ("file attached", "datei angehängt", "archivo adjunto", "fichier joint", "arquivo anexado",
                   "file allegato", "bestand bijgevoegd", "dosya ekli", "plik załączony")
_WA_MEDIA = re.compile(r"(PTT|AUD|IMG|VID|DOC|STK)-\d{8}-WA\d+|\d{8}-(AUDIO|PHOTO|VIDEO|STICKER|GIF)-")
_OMITTED_WORDS = {"omitted", "ausgeschlossen", "weggelassen", "omitido", "omitida", "omis", "omise",
                  "oculta", "oculto", "omessi", "omesso", "omessa", "weggelaten"}
_VOICE_WORDS = ("audio", "voice", "sprach", "áudio", "vocal")
_DELETED = {
    "this message was deleted", "you deleted this message", "diese nachricht wurde gelöscht",
    "du hast diese nachricht gelöscht", "se eliminó este mensaje", "eliminaste este mensaje",
    "ce message a été supprimé", "vous avez supprimé ce message", "mensagem apagada",
    "você apagou esta mensagem", "questo messaggio è stato eliminato", "hai eliminato questo messaggio",
    "waiting for this message", "warte auf diese nachricht",
}
_EDITED = re.compile(
    r"\s*<(this message was edited|diese nachricht wurde bearbeitet|se editó este mensaje|"
    r"ce message a été modifié|mensagem editada|messaggio modificato)>\s*$", re.I)
_EXAMPLES = "'07/07/2022, 19:54 - Ann: text' (Android) or '[07/07/2022, 19:54:01] Ann: text' (iOS)"
VOICE_SUFFIXES = (".opus",)


def looks_like_log(first_line: str) -> bool:
    """Whether a line has the layout of a WhatsApp message line (either dialect)."""
    line = first_line.lstrip("\ufeff")
    return bool(ANDROID.match(line) or IOS.match(line))


def chat_name(log_name: str, container_name: str | None = None) -> str | None:
    """The chat's name from 'WhatsApp Chat with NAME.txt' (or the zip's name for iOS '_chat.txt')."""
    for name in (PurePosixPath(log_name).stem,
                 PurePosixPath(container_name).stem if container_name else None):
        if not name or name == "_chat":
            continue
        m = re.match(r"(?i).*?whats\s?app\b.*?(?:\bwith|\bmit|\bcon|\bavec|\bcom|\bmet|\bile|\s-)\s+(.+)",
                     name)
        return m.group(1).strip() if m else name
    return None


def _omitted(text: str) -> bool:
    words = text.strip("<>").lower().split()
    return 0 < len(words) <= 5 and not _OMITTED_WORDS.isdisjoint(words)


def parse_log(text: str, file: str, exists: Callable[[str], bool], date_order: str = "auto",
              chat: str | None = None) -> ParsedChat:
    """Read a WhatsApp log (already decoded) into voice notes and candidate texts.

    ``exists`` tells whether a media file is in the export (a document with any name counts as an
    attachment when it is). A message that continues over several lines stays one message; system
    lines (no author, or marked by WhatsApp), deleted messages, omitted media and attachments other
    than voice notes are counted, not candidates. Dates are read in one order for the whole file
    (``date_order``; ``auto`` decides from every date in the log). Raises ``DataError`` with
    ``file:line: reason`` for a layout it does not know, bad dates, or a chat without media.
    """
    if date_order not in DATE_ORDERS:
        raise DataError(f"--date-order must be one of {', '.join(DATE_ORDERS)}, got {date_order!r}")
    dialect, entries, more = _entries(text, file)
    problems: list[Problem] = []
    order, note = _date_order(entries, file, date_order, problems)
    base, stamp = _times(entries, order, file, problems)
    if problems:
        raise DataError(f"invalid WhatsApp log: {len(problems)} problem(s)\n"
                        + "\n".join(f"  {p}" for p in problems[:50]))
    parsed = ParsedChat(format=f"whatsapp-{dialect}", file=file, chat=chat, notes=[note] if note else [])
    parsed.counts = dict.fromkeys(("system_lines", "deleted", "other_attachments", "media_omitted"), 0)
    _read_messages(parsed, entries, more, tie_break(base), stamp, dialect == "ios", exists)
    if not parsed.voices and parsed.counts["media_omitted"]:
        raise DataError(
            f"{file}:0: exported without media ({parsed.counts['media_omitted']} media omitted, "
            "no voice notes "
            "attached): export the chat again and choose 'Include media' (iOS: 'Attach Media')"
        )
    return parsed


def _entries(text: str, file: str) -> tuple[str, list[tuple], dict[int, list[str]]]:
    """The log's dialect, one (line, date, clock, author, text) entry per message, and each entry's
    continuation lines by entry index; ``DataError`` for an empty log or a layout it does not know."""
    lines = text.replace("\r\n", "\n").split("\n")
    first = next((i for i, s in enumerate(lines) if s.strip(_BIDI + " \t\r")), None)
    if first is None:
        raise DataError(f"{file}:0: empty chat log")
    head = lines[first]
    if ANDROID.match(head):
        dialect, pattern = "android", ANDROID
    elif IOS.match(head):
        dialect, pattern = "ios", IOS
    else:
        raise DataError(
            f"{file}:{first + 1}: not a WhatsApp message line: {head[:80]!r} (unknown date/time "
            f"layout; expected lines like {_EXAMPLES})"
        )
    match = pattern.match
    # equal dates and clocks share one tuple, which keeps a 50 MB log's entries small
    entries: list[tuple] = []
    more: dict[int, list[str]] = {}
    shared: dict[tuple, tuple] = {}
    for i in range(first, len(lines)):
        m = match(lines[i])
        if m is None:
            more.setdefault(len(entries) - 1, []).append(lines[i])
            continue
        d1, _, d2, d3, h, mi, s, ampm, author, body = m.groups()
        date, clock = (d1, d2, d3), (h, mi, s, ampm)
        entries.append((i + 1, shared.setdefault(date, date), shared.setdefault(clock, clock), author, body))
    return dialect, entries, more


def _read_messages(
    parsed: ParsedChat,
    entries: list[tuple],
    more: dict[int, list[str]],
    times: list[float],
    stamp: Callable,
    ios: bool,
    exists: Callable[[str], bool],
) -> None:
    """Sort the entries into ``parsed``'s voice notes, messages, counts and skipped notes; one pass,
    with the state of the whole log in locals (a call per line would cost on a large log)."""
    counts, voices, messages, file = parsed.counts, parsed.voices, parsed.messages, parsed.file
    voice_omitted = []
    for j, (e, time) in enumerate(zip(entries, times)):
        line, author, raw = e[0], e[3], e[4]
        if author is None or (ios and author.startswith("\u200e")):
            counts["system_lines"] += 1
            continue
        if not author.isascii():
            author = author.translate(_NO_BIDI)
        author = author.strip()
        if not author or '"' in author or "\u201c" in author:
            counts["system_lines"] += 1  # e.g. 'Ann changed the subject to "Trip: Rome"'
            continue
        marked = ios and raw.startswith("\u200e")  # text WhatsApp wrote itself
        body = (raw if raw.isascii() else raw.translate(_NO_BIDI)).strip()
        caption = "\n".join(more[j]).translate(_NO_BIDI).strip() if j in more else ""
        name = _attachment(body, exists) if ("<" in body or "(" in body) else None
        if name is not None:
            if name.lower().endswith(VOICE_SUFFIXES):
                voices.append(VoiceNote(name, time, stamp(e), author, line))
            else:
                counts["other_attachments"] += 1
                if caption:
                    messages.append(Message(time, caption, author, line))
            continue
        if len(body) <= 48:
            if (marked or body.startswith("<")) and _omitted(body):
                counts["media_omitted"] += 1
                if any(w in body.lower() for w in _VOICE_WORDS):
                    voice_omitted.append(
                        Problem(file, line, f"voice note not in the export ({body.strip('<>')})")
                    )
                continue
            if body.rstrip(".").lower() in _DELETED:
                counts["deleted"] += 1
                continue
        if marked:
            counts["system_lines"] += 1
            continue
        if caption:
            body = f"{body}\n{caption}"
        if body.endswith(">"):
            body = _EDITED.sub("", body)
        messages.append(Message(time, body, author, line))
    parsed.skipped = voice_omitted


def _attachment(body: str, exists: Callable[[str], bool]) -> str | None:
    """The media file a message attaches, or None for typed text."""
    if "<" in body:
        m = _IOS_ATTACHED.fullmatch(body)
        if m:
            return m.group(1).strip()
    if "(" in body:
        m = _ANDROID_ATTACHED.fullmatch(body)
        if m:
            name, note = m.group(1).strip(), m.group(2).lower()
            if note in _ATTACHED_WORDS or _WA_MEDIA.match(name) or exists(name):
                return name
    return None


def _date_order(entries: list[list], file: str, flag: str, problems: list[Problem]) -> tuple[str, str | None]:
    """The date order of the whole log: the flag's, or the one every date in the file allows."""
    if flag != "auto":
        return flag, None
    first_line: dict[tuple, int] = {}
    for e in entries:
        first_line.setdefault(e[1], e[0])
    year_first = [k for k in first_line if len(k[0]) == 4]
    if year_first:
        if len(year_first) < len(first_line):
            other = next(k for k in first_line if len(k[0]) != 4)
            problems.append(
                Problem(
                    file,
                    first_line[other],
                    f"date {'/'.join(other)} is not year-first like "
                    f"the date on line {first_line[year_first[0]]}: set --date-order",
                )
            )
        return "ymd", None
    day_first = next((k for k in first_line if int(k[0]) > 12), None)
    month_first = next((k for k in first_line if int(k[1]) > 12), None)
    if day_first and month_first:
        problems.append(
            Problem(
                file,
                first_line[month_first],
                f"date {'/'.join(month_first)} is month-first but {'/'.join(day_first)} on line "
                f"{first_line[day_first]} is day-first: set --date-order dmy or mdy",
            )
        )
        return "dmy", None
    if day_first:
        return (
            "dmy",
            f"dates read day-first (DD/MM/YYYY): {'/'.join(day_first)} on line {first_line[day_first]}",
        )
    if month_first:
        return "mdy", (
            f"dates read month-first (MM/DD/YYYY): {'/'.join(month_first)} on line {first_line[month_first]}"
        )
    if all(k[0] == k[1] for k in first_line):
        return "dmy", None  # both orders read the same dates
    return _order_by_time(first_line, file, problems)


def _order_by_time(
    first_line: dict[tuple, int], file: str, problems: list[Problem]
) -> tuple[str, str | None]:
    """The date order when every date fits both: the log is in time order, so the order that keeps it
    so (a problem, and 'dmy', when both orders do equally well)."""
    keys = list(first_line)
    inversions = {}
    for order in ("dmy", "mdy"):
        days = [_ymd(k, order) for k in keys]
        inversions[order] = sum(1 for a, b in zip(days, days[1:]) if b < a)
    if inversions["dmy"] != inversions["mdy"]:
        order = min(inversions, key=inversions.get)
        return order, (
            f"dates read {'day' if order == 'dmy' else 'month'}-first: every date fits both "
            "orders, and only this one keeps the log in time order (set --date-order to "
            "override)"
        )
    ambiguous = next(k for k in keys if k[0] != k[1])
    problems.append(
        Problem(
            file,
            first_line[ambiguous],
            f"cannot tell whether {'/'.join(ambiguous)} is day-first or month-first: every "
            f"date in the log fits both; set --date-order dmy or mdy",
        )
    )
    return "dmy", None


def _ymd(key: tuple, order: str) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in key)
    if order == "ymd":
        y, mo, d = a, b, c
    elif order == "mdy":
        mo, d, y = a, b, c
    else:
        d, mo, y = a, b, c
    return (y + 2000 if y < 100 else y), mo, d


def _times(
    entries: list[tuple], order: str, file: str, problems: list[Problem]
) -> tuple[list[float], Callable[[tuple], str]]:
    """Unix seconds of every entry, and a function giving an entry's ISO local timestamp.

    Dates and clock times repeat a lot, so each distinct one is parsed once; bad dates and times
    become problems.
    """
    days: dict[tuple, tuple[int, str] | None] = {}
    clocks: dict[tuple, tuple[int, str] | None] = {}
    out: list[float] = []
    for e in entries:
        key, ck = e[1], e[2]
        day = days.get(key, False)
        if day is False:
            day = days[key] = _day(key, order)
            if day is None:
                problems.append(Problem(file, e[0], f"invalid date {'/'.join(key)} (read as {order})"))
        clock = clocks.get(ck, False)
        if clock is False:
            clock = clocks[ck] = _clock(*ck)
        if clock is None:
            h, mi, s, ampm = ck
            problems.append(
                Problem(
                    file,
                    e[0],
                    f"invalid time {h}:{mi}{':' + s if s else ''}{' ' + ampm + 'M' if ampm else ''}",
                )
            )
        out.append(day[0] + clock[0] if day is not None and clock is not None else 0.0)
    return out, lambda e: f"{days[e[1]][1]}T{clocks[e[2]][1]}"


def _day(key: tuple, order: str) -> tuple[int, str] | None:
    y, mo, d = _ymd(key, order)
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1]):
        return None
    return calendar.timegm((y, mo, d, 0, 0, 0)), f"{y:04d}-{mo:02d}-{d:02d}"


def _clock(h: str, mi: str, s: str | None, ampm: str | None) -> tuple[int, str] | None:
    hour, minute, sec = int(h), int(mi), int(s or 0)
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm in "Pp" else 0)
    if hour > 23 or minute > 59 or sec > 59:
        return None
    return hour * 3600 + minute * 60 + sec, f"{hour:02d}:{minute:02d}:{sec:02d}"
