"""Telegram Desktop "Export chat history" (machine-readable JSON) as voice notes and text messages.

The export is a folder with ``result.json`` and the media beside it, voice messages in
``voice_messages/*.ogg``. A voice message has ``"media_type": "voice_message"`` and ``"file"``
(a path relative to result.json, or "(File not included. ...)" when the export left it out). The
``text`` of a message is a string or a list of strings and entities (``{"type": "bold", "text":
"..."}``), joined here to plain text. Times are ``date_unixtime`` (UTC seconds) when present,
else ``date`` (local time, read as UTC like WhatsApp's).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from plcli.data.chat import Message, parse_timestamp
from plcli.data.exports.base import ParsedChat, VoiceNote, tie_break
from plcli.data.manifest import Problem
from plcli.errors import DataError

_MEDIA_KEYS = ("photo", "file", "media_type", "poll", "location_information", "contact_information")


def plain_text(value: Any) -> str:
    """A message's ``text`` (string, or list of strings and entity objects) as plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(v if isinstance(v, str) else str(v.get("text", "")) if isinstance(v, dict) else ""
                       for v in value)
    return ""


def _message_lines(text: str, messages: list) -> list[int]:
    """The line where each message object starts (Telegram pretty-prints; 0 when not found)."""
    start = max(text.find('"messages"'), 0)
    pos, line, out = start, text.count("\n", 0, start) + 1, []
    for msg in messages:
        mid = msg.get("id") if isinstance(msg, dict) else None
        at = -1 if mid is None else text.find(f'"id": {json.dumps(mid)}', pos)
        if at < 0:
            out.append(0)
            continue
        line += text.count("\n", pos, at)
        pos = at
        brace = text.rfind("{", 0, at)  # the object starts on the line of its "{"
        out.append(line - text.count("\n", brace, at))
    return out


def _time(msg: dict) -> tuple[float, str]:
    unix = msg.get("date_unixtime")
    date = msg.get("date")
    if unix is not None:
        seconds = float(unix)
        stamp = (
            date
            if isinstance(date, str)
            else datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        )
        return seconds, stamp
    seconds, _ = parse_timestamp(date)
    return seconds, str(date)


def parse_result(text: str, file: str) -> ParsedChat:
    """Read Telegram's result.json (already decoded) into voice notes and candidate texts.

    Service messages (joins, calls, pins) are counted, not candidates; the caption of a photo, a
    file or a voice message is a text like any other (a voice message's comes right after it).
    Raises ``DataError`` with ``file:line: reason`` for malformed JSON, a file that is not a
    single-chat export, bad dates, or an export without voice messages.
    """
    data = _load(text, file)
    chat = data.get("name") if isinstance(data.get("name"), str) else None
    parsed = ParsedChat(format="telegram", file=file, chat=chat)
    counts = dict.fromkeys(("system_lines", "other_attachments", "media_omitted"), 0)
    kept = _dated_messages(data["messages"], _message_lines(text, data["messages"]), file, counts)
    times = tie_break([t for _, _, t, _ in kept])
    half_step = 0.25 / (len(kept) + 1)
    for (msg, line, _, stamp), time in zip(kept, times):
        author = msg.get("from") or msg.get("from_id")
        author = str(author).strip() if author else None
        if msg.get("media_type") == "voice_message":
            name = msg.get("file")
            if not isinstance(name, str) or not name.strip() or name.startswith("("):
                counts["media_omitted"] += 1
                parsed.skipped.append(Problem(file, line, "voice message not included in the export (export "
                                              "again with 'Voice messages' ticked)"))
            else:
                parsed.voices.append(VoiceNote(name, time, stamp, author, line))
            caption = plain_text(msg.get("text")).strip()
            if caption:  # typed with the voice message, so right after it
                parsed.messages.append(Message(time + half_step, caption, author, line))
            continue
        if any(k in msg for k in _MEDIA_KEYS):
            counts["other_attachments"] += 1
        body = plain_text(msg.get("text")).strip()
        if body:
            parsed.messages.append(Message(time, body, author, line))
    parsed.counts = counts
    if not parsed.voices and counts["media_omitted"]:
        raise DataError(f"{file}:0: exported without voice messages ({counts['media_omitted']} not "
                        "included): export the chat again with 'Voice messages' ticked")
    return parsed


def _load(text: str, file: str) -> dict:
    """The export as JSON: an object with a ``messages`` list, else ``DataError``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{file}:{e.lineno}: malformed JSON: {e.msg} at column {e.colno} (cut off or edited?)"
        ) from None
    if isinstance(data, dict) and "messages" not in data and isinstance(data.get("chats"), dict):
        raise DataError(
            f"{file}:1: this is a full-account export; export a single chat instead (open the "
            "chat, ⋮ > Export chat history, format: Machine-readable JSON)"
        )
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise DataError(
            f"{file}:1: not a Telegram chat export: expected a JSON object with a 'messages' list"
        )
    return data


def _dated_messages(
    messages: list, lines: list[int], file: str, counts: dict[str, int]
) -> list[tuple[dict, int, float, str]]:
    """(message, line, unix time, timestamp text) of every ordinary message, in file order; service
    messages are counted in ``counts``; a malformed message or date is a ``DataError`` (all listed)."""
    problems: list[Problem] = []
    kept: list[tuple[dict, int, float, str]] = []
    for msg, line in zip(messages, lines):
        if not isinstance(msg, dict):
            problems.append(Problem(file, line, f"expected a message object, got {type(msg).__name__}"))
            continue
        if msg.get("type") != "message":
            counts["system_lines"] += 1
            continue
        try:
            time, stamp = _time(msg)
        except (TypeError, ValueError) as e:
            problems.append(Problem(file, line, f"message {msg.get('id')}: bad date ({e})"))
            continue
        kept.append((msg, line, time, stamp))
    if problems:
        raise DataError(
            f"invalid Telegram export: {len(problems)} problem(s)\n"
            + "\n".join(f"  {p}" for p in problems[:50])
        )
    return kept
