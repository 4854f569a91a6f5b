"""plcli data from-chat on WhatsApp and Telegram exports as the apps write them (hand-written fixtures,
real Opus voice notes made here with soundfile)."""

from __future__ import annotations

import calendar
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from plcli.cli import app
from plcli.data.audio import load_audio
from plcli.data.exports import detect_format, import_export, read_export
from plcli.data.labels import LabelNormalizer
from plcli.errors import DataError

LRM, PDF, LRE, NNBSP = "\u200e", "\u202c", "\u202a", "\u202f"
PHONE = f"{LRE}+49 170 1234567{PDF}"


def opus_bytes(seconds: float = 1.0, freq: float = 300.0, sr: int = 16000, seed: int = 0) -> bytes:
    """A real Ogg/Opus voice note: a tone with a little noise (WhatsApp records 16 kHz mono)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.01, t.shape)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="OGG", subtype="OPUS")
    return buf.getvalue()


def make_zip(path: Path, log: str, log_name: str = "_chat.txt",
             media: dict[str, bytes] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(log_name, log.encode())
        for name, data in (media or {}).items():
            zf.writestr(name, data)
    return path


def make_folder(path: Path, files: dict[str, str | bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def run(export, out, **kw):
    return import_export(export, out_path=out, key=LabelNormalizer(), **kw)


def by_id(rows):
    return {r["id"]: r for r in rows}


# -- Android, en-GB: day-first, 24-hour clock, a group chat with three authors -----------------------
ANDROID_GB = f"""\
13/07/2022, 19:50 - Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read or listen to them. Tap to learn more.
13/07/2022, 19:51 - Ann created group "Trip: Rome"
13/07/2022, 19:51 - Ann added Bob
13/07/2022, 19:52 - Bob: are you coming?
13/07/2022, 19:54 - Ann: PTT-20220713-WA0001.opus (file attached)
13/07/2022, 19:54 - Ann: on my way
13/07/2022, 19:55 - Bob: ok
see you at the station
13/07/2022, 19:56 - {PHONE}: IMG-20220713-WA0002.jpg (file attached)
the view from here
13/07/2022, 19:57 - Bob: This message was deleted
13/07/2022, 19:58 - Bob: PTT-20220713-WA0003.opus (file attached)
13/07/2022, 19:58 - Bob: ok <This message was edited>
13/07/2022, 19:59 - {PHONE}: PTT-20220713-WA0004.opus (file attached)
14/07/2022, 08:00 - Ann: good morning
"""  # noqa: E501 - the export's own lines
GB_MEDIA = {f"PTT-20220713-WA000{i}.opus": opus_bytes(freq=200 + 100 * i, seed=i) for i in (1, 3, 4)}
GB_MEDIA["IMG-20220713-WA0002.jpg"] = b"\xff\xd8 not really a jpeg"


def test_whatsapp_android_group_chat(tmp_path):
    export = make_zip(tmp_path / "WhatsApp Chat - Trip.zip", ANDROID_GB, "WhatsApp Chat with Trip.txt",
                      GB_MEDIA)
    assert detect_format(export) == "whatsapp"
    rows, summary = run(export, tmp_path / "out" / "train.jsonl")
    rows = by_id(rows)
    assert list(rows) == ["PTT-20220713-WA0001", "PTT-20220713-WA0003", "PTT-20220713-WA0004"]
    # same-minute text after the voice note counts; the caption is a text; deleted and system lines are not
    assert rows["PTT-20220713-WA0001"]["candidates"] == [
        "on my way", "ok\nsee you at the station", "the view from here", "ok", "good morning"]
    # "<This message was edited>" cut
    assert rows["PTT-20220713-WA0003"]["candidates"] == ["ok", "good morning"]
    assert rows["PTT-20220713-WA0004"]["candidates"] == ["good morning"]
    assert [r["speaker"] for r in rows.values()] == ["Ann", "Bob", "+49 170 1234567"]  # direction marks gone
    assert [r["timestamp"] for r in rows.values()] == [
        "2022-07-13T19:54:00", "2022-07-13T19:58:00", "2022-07-13T19:59:00"]
    assert rows["PTT-20220713-WA0001"]["audio"] == "train-media/PTT-20220713-WA0001.opus"
    assert rows["PTT-20220713-WA0001"]["source"] == "WhatsApp Chat with Trip.txt:5"
    assert rows["PTT-20220713-WA0001"]["chat"] == "Trip"
    c = summary["counts"]
    assert (c["voice_notes"], c["imported"], c["messages"], c["system_lines"],
            c["deleted"]) == (3, 3, 6, 3, 1)
    assert c["other_attachments"] == 1 and summary["skipped"] == []
    assert summary["authors"] == {"Ann": {"voice_notes": 1, "messages": 2},
                                  "Bob": {"voice_notes": 1, "messages": 3},
                                  "+49 170 1234567": {"voice_notes": 1, "messages": 1}}
    assert summary["candidate_set_sizes"] == {1: 1, 2: 1, 5: 1}
    assert summary["notes"] == ["dates read day-first (DD/MM/YYYY): 13/07/2022 on line 1"]
    # the voice notes decode through the project's audio path, at the model rate
    wave = load_audio(tmp_path / "out" / rows["PTT-20220713-WA0001"]["audio"], 16000, max_seconds=3.0)
    assert wave.shape == (48000,) and np.abs(wave).max() > 0.1


def test_whatsapp_options_k_window_same_author_labels(tmp_path):
    export = make_zip(tmp_path / "chat.zip", ANDROID_GB, media=GB_MEDIA)
    out = tmp_path / "train.jsonl"
    rows, _ = run(export, out, same_author=True)
    assert [r["candidates"] for r in rows] == [["on my way", "good morning"], ["ok"], []]  # last: unlabelled
    rows, _ = run(export, out, k=2, window_seconds=120)
    assert [r["candidates"] for r in rows] == [["on my way", "ok\nsee you at the station"], ["ok"], []]
    labels = make_folder(tmp_path, {"labels.csv": "id,label\nPTT-20220713-WA0001,on my way\n"}) / "labels.csv"
    rows, summary = run(export, out, labels_path=labels)
    assert rows[0]["label"] == "on my way" and "label" not in rows[1]
    assert summary["counts"]["labelled"] == 1


# -- Android, en-US: month-first, 12-hour clock with U+202F before AM/PM ------------------------------
ANDROID_US = f"""\
7/13/22, 7:54{NNBSP}PM - Ann: PTT-20220713-WA0001.opus (file attached)
7/13/22, 7:55{NNBSP}PM - Ann: on my way
7/14/22, 12:05{NNBSP}AM - Bob: past midnight
7/14/22, 12:30{NNBSP}PM - Bob: PTT-20220714-WA0002.opus (file attached)
7/14/22, 12:31{NNBSP}PM - Bob: lunch?
"""


def test_whatsapp_android_us_12_hour(tmp_path):
    media = {"PTT-20220713-WA0001.opus": opus_bytes(), "PTT-20220714-WA0002.opus": opus_bytes(seed=1)}
    export = make_folder(tmp_path / "export", {"WhatsApp Chat with Bob.txt": ANDROID_US, **media})
    rows, summary = run(export, tmp_path / "out" / "train.jsonl")
    assert [r["timestamp"] for r in rows] == ["2022-07-13T19:54:00", "2022-07-14T12:30:00"]
    assert [r["candidates"] for r in rows] == [["on my way", "past midnight", "lunch?"], ["lunch?"]]
    assert [r["speaker"] for r in rows] == ["Ann", "Bob"] and rows[0]["chat"] == "Bob"
    assert summary["format"] == "whatsapp-android" and "month-first" in summary["notes"][0]
    # a folder outside the manifest's folder: the voice notes are copied beside the manifest
    assert rows[0]["audio"] == "train-media/PTT-20220713-WA0001.opus"
    assert (tmp_path / "out" / rows[0]["audio"]).read_bytes() == media["PTT-20220713-WA0001.opus"]


def test_whatsapp_folder_under_the_manifest_is_used_in_place(tmp_path):
    media = {"PTT-20220713-WA0001.opus": opus_bytes(), "PTT-20220714-WA0002.opus": opus_bytes(seed=1)}
    make_folder(tmp_path / "export", {"_chat.txt": ANDROID_US, **media})
    rows, summary = run(tmp_path / "export" / "_chat.txt", tmp_path / "train.jsonl")
    assert rows[0]["audio"] == "export/PTT-20220713-WA0001.opus"
    assert summary["counts"]["extracted"] == 0 and not (tmp_path / "train-media").exists()


# -- iOS, de-DE: day-first with dots, seconds; system texts marked with U+200E ------------------------
IOS_DE = f"""\
[13.07.22, 19:50:00] Reise: {LRM}Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt. Niemand außerhalb dieses Chats kann sie lesen.
[13.07.22, 19:54:01] Anna: {LRM}<Anhang: 00000012-AUDIO-2022-07-13-19-54-01.opus>
[13.07.22, 19:54:01] Anna: bin unterwegs
[13.07.22, 19:55:02] Ben: {LRM}Bild weggelassen
[13.07.22, 19:56:10] Ben: super,
bis gleich
[13.07.22, 19:57:00] Ben: {LRM}Diese Nachricht wurde gelöscht.
{LRM}[14.07.22, 09:00:00] Ben: {LRM}<Anhang: 00000013-AUDIO-2022-07-14-09-00-00.opus>
"""  # noqa: E501 - the export's own lines


def test_whatsapp_ios_german(tmp_path):
    media = {"00000012-AUDIO-2022-07-13-19-54-01.opus": opus_bytes(),
             "00000013-AUDIO-2022-07-14-09-00-00.opus": opus_bytes(seed=2)}
    export = make_zip(tmp_path / "WhatsApp Chat - Reise.zip", IOS_DE, "_chat.txt", media)
    rows, summary = run(export, tmp_path / "train.jsonl")
    assert [r["id"] for r in rows] == ["00000012-AUDIO-2022-07-13-19-54-01",
                                       "00000013-AUDIO-2022-07-14-09-00-00"]
    # the text sent in the same second as the voice note, after it in the log, is a candidate
    assert rows[0]["candidates"] == ["bin unterwegs", "super,\nbis gleich"]
    assert rows[1]["candidates"] == []
    assert [r["speaker"] for r in rows] == ["Anna", "Ben"]
    assert [r["timestamp"] for r in rows] == ["2022-07-13T19:54:01", "2022-07-14T09:00:00"]
    assert summary["format"] == "whatsapp-ios" and summary["chat"] == "Reise"
    c = summary["counts"]
    assert (c["system_lines"], c["deleted"], c["media_omitted"], c["messages"]) == (1, 1, 1, 2)
    assert any("1 media file(s) omitted" in w for w in summary["warnings"])
    assert summary["authors"]["Ben"] == {"voice_notes": 1, "messages": 1}


IOS_US = f"""\
[7/13/22, 7:54:01{NNBSP}PM] Ann: {LRM}<attached: 00000012-AUDIO-2022-07-13-19-54-01.opus>
[7/13/22, 7:54:30{NNBSP}PM] Ann: on my way
[7/13/22, 11:02:00{NNBSP}PM] Bob: {LRM}audio omitted
[7/13/22, 11:03:00{NNBSP}PM] Bob: see you
"""


def test_whatsapp_ios_us_12_hour_and_omitted_voice_note_listed(tmp_path):
    export = make_zip(tmp_path / "chat.zip", IOS_US,
                      media={"00000012-AUDIO-2022-07-13-19-54-01.opus": opus_bytes()})
    rows, summary = run(export, tmp_path / "train.jsonl")
    assert rows[0]["timestamp"] == "2022-07-13T19:54:01"
    assert rows[0]["candidates"] == ["on my way", "see you"]
    assert rows[0]["speaker"] == "Ann" and set(summary["authors"]) == {"Ann", "Bob"}
    assert summary["counts"]["voice_notes"] == 2 and summary["counts"]["skipped"] == 1
    assert summary["skipped"] == [f"{export}/_chat.txt:3: voice note not in the export (audio omitted)"]


def test_whatsapp_without_media_is_refused(tmp_path):
    log = "13/07/2022, 19:54 - Ann: <Media omitted>\n13/07/2022, 19:55 - Ann: on my way\n"
    with pytest.raises(DataError, match=r"_chat.txt:0: exported without media .* 'Include media'"):
        run(make_zip(tmp_path / "chat.zip", log), tmp_path / "train.jsonl")


# -- date order: decided from the whole file, or set with --date-order -------------------------------
def test_date_order_from_the_whole_file(tmp_path):
    media = {"PTT-20220102-WA0001.opus": opus_bytes()}
    # 01/02 then 02/01: only month-first (2 Jan, 1 Feb) keeps this log in time order
    log = ("01/02/2022, 10:00 - Ann: PTT-20220102-WA0001.opus (file attached)\n01/02/2022, 10:05 - Ann: b\n"
           "02/01/2022, 10:00 - Ann: c\n")
    rows, summary = run(make_zip(tmp_path / "a.zip", log, media=media), tmp_path / "a.jsonl")
    assert rows[0]["timestamp"] == "2022-01-02T10:00:00" and "time order" in summary["notes"][0]
    assert rows[0]["candidates"] == ["b", "c"]
    # every date fits both orders and both keep the log in order: refused, unless the flag decides
    log = "01/02/2022, 10:00 - Ann: PTT-20220102-WA0001.opus (file attached)\n01/02/2022, 10:01 - Ann: b\n"
    export = make_zip(tmp_path / "b.zip", log, media=media)
    with pytest.raises(DataError, match=r"_chat.txt:1: cannot tell whether 01/02/2022 .* --date-order"):
        run(export, tmp_path / "b.jsonl")
    rows, _ = run(export, tmp_path / "b.jsonl", date_order="dmy")
    assert rows[0]["timestamp"] == "2022-02-01T10:00:00"
    rows, _ = run(export, tmp_path / "b.jsonl", date_order="mdy")
    assert rows[0]["timestamp"] == "2022-01-02T10:00:00"
    # day-first and month-first dates in one file are never read line by line
    log = ("13/01/2022, 10:00 - Ann: PTT-20220102-WA0001.opus (file attached)\n"
           "01/14/2022, 10:01 - Ann: b\n")
    with pytest.raises(DataError,
                       match=r"_chat.txt:2: date 01/14/2022 is month-first but 13/01/2022 on line 1"):
        run(make_zip(tmp_path / "c.zip", log, media=media), tmp_path / "c.jsonl")
    # year-first (e.g. sv-SE, ja-JP phones)
    log = "2022-07-13 19:54 - Ann: PTT-20220102-WA0001.opus (file attached)\n2022-07-13 19:55 - Ann: hej\n"
    rows, _ = run(make_zip(tmp_path / "d.zip", log, media=media), tmp_path / "d.jsonl")
    assert rows[0]["timestamp"] == "2022-07-13T19:54:00" and rows[0]["candidates"] == ["hej"]


# -- Telegram Desktop: result.json + voice_messages/*.ogg -------------------------------------------
def _tg(mid, date, **fields):
    """A message as Telegram Desktop writes it; the chat's clock is UTC+2."""
    unix = calendar.timegm(time.strptime(date, "%Y-%m-%dT%H:%M:%S")) - 7200
    return {"id": mid, "type": "message", "date": date, "date_unixtime": str(unix), **fields}


def telegram_export(root: Path) -> Path:
    voice = {"media_type": "voice_message", "mime_type": "audio/ogg", "duration_seconds": 1}
    messages = [
        {"id": 1, "type": "service", "date": "2022-07-13T19:50:00", "date_unixtime": "1657727400",
         "actor": "Ann", "action": "create_group", "title": "Family", "members": ["Bob", "Cid"], "text": "",
         "text_entities": []},
        _tg(2, "2022-07-13T19:54:01", **{"from": "Ann", "from_id": "user1"}, **voice,
            file="voice_messages/audio_1@13-07-2022_19-54-01.ogg", text="", text_entities=[]),
        _tg(3, "2022-07-13T19:54:20", **{"from": "Ann", "from_id": "user1"},
            text=["on my ", {"type": "bold", "text": "way"}, "!"],
            text_entities=[{"type": "plain", "text": "on my "}, {"type": "bold", "text": "way"}]),
        _tg(4, "2022-07-13T19:55:00", **{"from": "Bob", "from_id": "user2"},
            text=[{"type": "mention", "text": "@ann"}, " see you ", {"type": "text_link", "text": "there",
                                                                     "href": "https://example.org"}]),
        _tg(5, "2022-07-13T19:56:00", **{"from": "Bob", "from_id": "user2"}, photo="photos/photo_1.jpg",
            width=10, height=10, text="look"),
        _tg(6, "2022-07-13T19:57:00", **{"from": None, "from_id": "user3"}, **voice,
            file="voice_messages/audio_2@13-07-2022_19-57-00.ogg",
            text=["call ", {"type": "italic", "text": "me"}]),
        _tg(7, "2022-07-13T19:58:00", **{"from": "Cid", "from_id": "user4"}, **voice,
            file="(File not included. Change data exporting settings to download.)", text=""),
        _tg(8, "2022-07-13T19:59:00", **{"from": "Cid", "from_id": "user4"}, text="ok"),
    ]
    data = {"name": "Family", "type": "private_group", "id": 42, "messages": messages}
    return make_folder(root, {
        "result.json": json.dumps(data, ensure_ascii=False, indent=1),
        "voice_messages/audio_1@13-07-2022_19-54-01.ogg": opus_bytes(sr=48000),
        "voice_messages/audio_2@13-07-2022_19-57-00.ogg": opus_bytes(sr=48000, seed=3),
        "photos/photo_1.jpg": b"\xff\xd8",
    })


def test_telegram_group_with_entities(tmp_path):
    export = telegram_export(tmp_path / "ChatExport_2022-07-14")
    assert detect_format(export) == detect_format(export / "result.json") == "telegram"
    rows, summary = run(export, tmp_path / "out" / "train.jsonl")
    assert [r["id"] for r in rows] == ["audio_1@13-07-2022_19-54-01", "audio_2@13-07-2022_19-57-00"]
    assert rows[0]["candidates"] == ["on my way!", "@ann see you there", "look", "call me", "ok"]
    assert rows[1]["candidates"] == ["call me", "ok"]  # its own caption first
    assert [r["speaker"] for r in rows] == ["Ann", "user3"]  # a deleted account keeps its id
    assert [r["timestamp"] for r in rows] == ["2022-07-13T19:54:01", "2022-07-13T19:57:00"]
    assert rows[0]["audio"] == "train-media/voice_messages/audio_1@13-07-2022_19-54-01.ogg"
    assert rows[0]["chat"] == "Family"
    lines = (export / "result.json").read_text().splitlines()
    src_line = int(rows[0]["source"].split(":")[1])
    assert rows[0]["source"].startswith("result.json:") and lines[src_line].strip() == '"id": 2,'
    assert (
        len(summary["skipped"]) == 1 and "voice message not included in the export" in summary["skipped"][0]
    )
    c = summary["counts"]
    assert (c["voice_notes"], c["imported"], c["messages"], c["system_lines"],
            c["other_attachments"]) == (3, 2, 5, 1, 1)
    assert summary["authors"] == {"Ann": {"voice_notes": 1, "messages": 1},
                                  "Bob": {"voice_notes": 0, "messages": 2},
                                  "user3": {"voice_notes": 1, "messages": 1},
                                  "Cid": {"voice_notes": 0, "messages": 1}}
    # the same export zipped (a user may zip the folder) gives the same rows
    zpath = tmp_path / "tg.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in export.rglob("*"):
            if f.is_file():
                zf.write(f, f"ChatExport_2022-07-14/{f.relative_to(export)}")
    zrows, _ = run(zpath, tmp_path / "out" / "train.jsonl")
    def key(r):
        return r["id"], r["candidates"], r["audio"]

    assert [key(r) for r in zrows] == [key(r) for r in rows]


# -- bad input: refused or listed, always as file:line: reason ----------------------------------------
def test_truncated_zip(tmp_path):
    export = make_zip(tmp_path / "chat.zip", ANDROID_GB, media=GB_MEDIA)
    data = export.read_bytes()
    export.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{tmp_path}/chat.zip:0: truncated or corrupt zip"):
        run(export, tmp_path / "train.jsonl")


def test_unknown_layout(tmp_path):
    log = "2022. 7. 13. 오후 7:54, Ann : 안녕\n2022. 7. 13. 오후 7:55, Bob : 네\n"
    with pytest.raises(DataError,
                       match=r"_chat.txt:1: not a WhatsApp message line: .*unknown date/time layout"):
        run(make_zip(tmp_path / "chat.zip", log), tmp_path / "train.jsonl")


def test_missing_and_empty_voice_notes_are_listed(tmp_path):
    media = dict(GB_MEDIA)
    del media["PTT-20220713-WA0003.opus"]
    media["PTT-20220713-WA0004.opus"] = b""
    export = make_zip(tmp_path / "chat.zip", ANDROID_GB, media=media)
    rows, summary = run(export, tmp_path / "train.jsonl")
    assert [r["id"] for r in rows] == ["PTT-20220713-WA0001"]
    assert summary["skipped"] == [
        f"{export}/_chat.txt:12: voice note PTT-20220713-WA0003.opus is named in the log but missing from "
        "the export",
        f"{export}/_chat.txt:14: voice note PTT-20220713-WA0004.opus is empty (0 bytes)",
    ]
    assert summary["counts"]["voice_notes"] == 3 and summary["counts"]["skipped"] == 2


def test_corrupt_voice_note_is_listed(tmp_path):
    media = dict(GB_MEDIA)
    media["PTT-20220713-WA0003.opus"] = media["PTT-20220713-WA0003.opus"][:60]  # cut inside the Ogg header
    rows, summary = run(make_zip(tmp_path / "chat.zip", ANDROID_GB, media=media), tmp_path / "train.jsonl")
    assert [r["id"] for r in rows] == ["PTT-20220713-WA0001", "PTT-20220713-WA0004"]
    assert len(summary["skipped"]) == 1 and summary["skipped"][0].startswith(
        f"{tmp_path}/chat.zip/_chat.txt:12: voice note PTT-20220713-WA0003.opus: ")


def test_corrupt_zip_member_is_listed_and_unnamed_voice_files_warned(tmp_path):
    export = tmp_path / "chat.zip"
    media = {**GB_MEDIA, "PTT-20220713-WA0099.opus": opus_bytes(seed=9)}  # in the zip, not in the log
    with zipfile.ZipFile(export, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("_chat.txt", ANDROID_GB)
        for name, data in media.items():
            zf.writestr(name, data)
    data = bytearray(export.read_bytes())
    at = data.index(GB_MEDIA["PTT-20220713-WA0003.opus"]) + 200
    data[at] ^= 0xFF  # one flipped byte inside the stored voice note: its CRC no longer matches
    export.write_bytes(bytes(data))
    rows, summary = run(export, tmp_path / "train.jsonl")
    assert [r["id"] for r in rows] == ["PTT-20220713-WA0001", "PTT-20220713-WA0004"]
    assert summary["skipped"] == [
        f"{export}/_chat.txt:12: voice note PTT-20220713-WA0003.opus cannot be "
        f"extracted (truncated or corrupt zip: Bad CRC-32 for file 'PTT-20220713-WA0003.opus')"
    ]
    assert any("1 voice note file(s) in the export are not named" in w and "WA0099" in w
               for w in summary["warnings"])


@pytest.mark.parametrize("sr", [16000, 48000])
def test_opus_decodes_through_load_audio(tmp_path, sr):
    """soundfile's bundled libsndfile reads Ogg/Opus, including the centre window of a long note."""
    path = tmp_path / "PTT-20220713-WA0001.opus"
    rng = np.random.default_rng(0)
    t = np.arange(sr * 8) / sr
    wave = (0.3 * np.sin(2 * np.pi * 330 * t) * np.linspace(0.2, 1.0, t.size) + rng.normal(0, 0.01, t.size))
    sf.write(path, wave.astype(np.float32), sr, format="OGG", subtype="OPUS")
    assert sf.info(str(path)).samplerate == sr and sf.info(str(path)).frames == pytest.approx(
        8 * sr, abs=sr // 50
    )
    full = load_audio(path, 16000)
    window = load_audio(path, 16000, max_seconds=3.0)
    assert full.shape[0] == pytest.approx(8 * 16000, abs=400) and window.shape == (48000,)
    # the seek-and-read window is the middle of the whole decode (resampler edges aside)
    start = (full.shape[0] - 48000) // 2
    assert np.abs(window[1000:-1000] - full[start + 1000:start + 47000]).max() < 0.02


def test_bad_utf8_and_not_an_export(tmp_path):
    log = ANDROID_GB.encode().replace(b"on my way", b"on my \xff way")
    with zipfile.ZipFile(tmp_path / "chat.zip", "w") as zf:
        zf.writestr("_chat.txt", log)
    with pytest.raises(DataError, match=r"_chat.txt:6: not valid UTF-8"):
        run(tmp_path / "chat.zip", tmp_path / "train.jsonl")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"photo.png:0: not a chat export"):
        run(tmp_path / "photo.png", tmp_path / "train.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty:0: no chat export in this folder"):
        run(tmp_path / "empty", tmp_path / "train.jsonl")


def test_telegram_bad_json_and_full_account_export(tmp_path):
    root = telegram_export(tmp_path / "tg")
    text = (root / "result.json").read_text()
    (root / "result.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"result.json:\d+: malformed JSON"):
        run(root, tmp_path / "train.jsonl")
    (root / "result.json").write_text(json.dumps({"about": "x", "chats": {"list": []}}))
    with pytest.raises(DataError, match=r"result.json:1: this is a full-account export"):
        run(root, tmp_path / "train.jsonl")


@pytest.mark.slow
def test_50_mb_log(tmp_path):
    """A 50 MB log (about 700k messages) is read in seconds, with flat candidate sets."""
    header = "13/07/2022, 19:50 - Messages and calls are end-to-end encrypted.\n"
    chunk = "".join(
        f"13/07/2022, {10 + i // 60 % 10}:{i % 60:02d} - Ann: PTT-20220713-WA{i:04d}.opus (file attached)\n"
        if i % 1000 == 0 else f"13/07/2022, {10 + i // 60 % 10}:{i % 60:02d} - Bob: message number {i}\n"
        for i in range(10_000))
    text = header + chunk * (50_000_000 // len(chunk) + 1)
    path = tmp_path / "_chat.txt"
    path.write_text(text)
    assert path.stat().st_size > 50_000_000
    start = time.perf_counter()
    parsed = read_export(path)
    seconds = time.perf_counter() - start
    assert len(parsed.messages) > 600_000 and len(parsed.voices) > 600
    assert parsed.messages[1].text == "message number 2"
    assert seconds < 60, seconds


# -- the whole way: export -> manifest -> validate -> pretrain, through the CLI ---------------------
def test_cli_whatsapp_to_validate_and_pretrain(tmp_path):
    from tests.test_pretrain import tiny_config

    lines, media = [], {}
    phrases = ["on my way", "ok", "see you", "call me later"]
    for i in range(24):
        name = f"PTT-20220713-WA{i:04d}.opus"
        media[name] = opus_bytes(seconds=0.8, freq=200 * 1.25 ** (i % 4), seed=i)
        author = "Ann" if i % 2 else "Bob"
        lines.append(f"13/07/2022, 19:{i:02d} - {author}: {name} (file attached)")
        lines.append(f"13/07/2022, 19:{i:02d} - {author}: {phrases[i % 4]}")
    export = make_zip(tmp_path / "WhatsApp Chat - Trip.zip", "\n".join(lines) + "\n", "_chat.txt", media)
    out = tmp_path / "data" / "train.jsonl"
    runner = CliRunner()
    res = runner.invoke(app, ["data", "from-chat", str(export), "--out", str(out), "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "voice notes found" in res.output and "candidate set sizes" in res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and rows[0]["candidates"] == ["on my way", "ok", "see you"]
    assert rows[-1]["candidates"] == ["call me later"]
    # the folder with the manifest and its media can be moved
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    res = runner.invoke(app, ["validate", str(moved / "train.jsonl")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["pretrain", str(moved / "train.jsonl"), "--out", str(tmp_path / "pre"),
                              "--config", tiny_config(tmp_path), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pre" / "encoder.pt").exists()
    # a second run reuses the extracted voice notes
    res = runner.invoke(app, ["data", "from-chat", str(export), "--out", str(moved / "train.jsonl")])
    assert res.exit_code == 0, res.output


def test_cli_errors_and_tables_folder(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "from-chat", "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "give an EXPORT" in res.output
    make_folder(tmp_path / "chat",
                {"voices.csv": "audio,timestamp\na.wav,1\n", "messages.csv": "timestamp,text\n2,hi\n"})
    assert detect_format(tmp_path / "chat") == "tables"
    res = runner.invoke(app, ["data", "from-chat", str(tmp_path / "chat"), "--out",
                              str(tmp_path / "chat" / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "chat" / "o.jsonl").read_text())["candidates"] == ["hi"]
    res = runner.invoke(app, ["data", "from-chat", str(tmp_path / "chat"), "--voices", "x.csv", "--messages",
                              "y.csv",
                              "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2
    bad = make_zip(tmp_path / "bad.zip", "2022. 7. 13. 오후 7:54, Ann : 안녕\n")
    res = runner.invoke(app, ["data", "from-chat", str(bad), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and f"{bad}/_chat.txt:1: not a WhatsApp message line" in res.output


def test_log_found_among_other_txt_files_and_chats_without_voice_notes(tmp_path):
    media = {**GB_MEDIA, "notes.txt": b"shopping list\nmilk\n"}
    log = ANDROID_GB.replace("IMG-20220713-WA0002.jpg", "notes.txt")
    rows, summary = run(make_zip(tmp_path / "a.zip", log, "Chat.txt", media), tmp_path / "a.jsonl")
    assert summary["log"].endswith("a.zip/Chat.txt") and len(rows) == 3
    assert rows[0]["candidates"][2] == "the view from here"  # caption of the attached notes.txt
    with pytest.raises(DataError, match=r"_chat.txt:0: no voice notes in this chat"):
        run(make_zip(tmp_path / "b.zip", "13/07/2022, 19:52 - Bob: hi\n"), tmp_path / "b.jsonl")
    with pytest.raises(DataError, match=r"(?s)no voice note could be imported .*_chat.txt:5: voice note "
                                        r"PTT-20220713-WA0001.opus is named in the log but missing"):
        run(make_zip(tmp_path / "c.zip", ANDROID_GB), tmp_path / "c.jsonl")


def test_docs_examples_match(tmp_path):
    """The WhatsApp and Telegram examples in docs/chat-import.md give the manifest lines shown there."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "chat-import.md").read_text()
    blocks = dict(re.findall(r"`([^`\n]+)`:\s*\n+```\w*\n(.*?)```", text, flags=re.S))
    android = blocks["WhatsApp Chat with Trip.txt"]
    media = {n: opus_bytes(seed=i) for i, n in enumerate(re.findall(r"[\w-]+\.opus", android))}
    export = make_zip(tmp_path / "WhatsApp Chat - Trip.zip", android, "WhatsApp Chat with Trip.txt", media)
    rows, summary = run(export, tmp_path / "trip.jsonl", k=3)
    assert rows == [json.loads(line) for line in blocks["trip.jsonl"].splitlines()]
    assert summary["notes"] == ["dates read day-first (DD/MM/YYYY): 13/07/2022 on line 1"]

    ios = blocks["_chat.txt"]
    assert LRM in ios and NNBSP in ios
    media = {n: opus_bytes(seed=i) for i, n in enumerate(re.findall(r"[\w-]+\.opus", ios))}
    ios_rows, _ = run(make_zip(tmp_path / "ios.zip", ios, "_chat.txt", media), tmp_path / "ios.jsonl", k=3)
    assert [r["candidates"] for r in ios_rows] == [r["candidates"] for r in rows]
    assert [r["id"] for r in ios_rows] == ["00000003-AUDIO-2022-07-13-19-54-01",
                                           "00000007-AUDIO-2022-07-13-19-58-10"]
    assert ios_rows[0]["timestamp"] == "2022-07-13T19:54:01"

    result = blocks["result.json"]
    voice = json.loads(result)["messages"][0]["file"]
    folder = make_folder(tmp_path / "ChatExport_2022-07-14",
                         {"result.json": result, voice: opus_bytes(sr=48000)})
    tg_rows, _ = run(folder, tmp_path / "out" / "family.jsonl")
    assert tg_rows == [json.loads(line) for line in blocks["family.jsonl"].splitlines()]
