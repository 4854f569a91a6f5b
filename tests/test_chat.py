"""plcli data from-chat: candidate sets from a chat export, on small hand-written chats."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from plcli.data.chat import (
    Message,
    Voice,
    build_candidates,
    from_chat,
    parse_timestamp,
    read_table,
    write_manifest,
)
from plcli.errors import DataError, UserError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "chat-import.md"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def problems_of(excinfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


# a small chat: two people, voice messages at 10:00:00 (ann) and 10:05:00 (bob)
VOICES = """\
audio,timestamp,author,group
audio/a.wav,2024-05-01T10:00:00,ann,g1
audio/b.wav,2024-05-01T10:05:00,bob,
"""
MESSAGES = """\
timestamp,text,author
2024-05-01T09:59:59,before everything,ann
2024-05-01T10:00:00,same second as a,ann
2024-05-01T10:00:30,on my way,ann
2024-05-01T10:01:00,ok,bob
2024-05-01T10:02:00,On my way ,ann
2024-05-01T10:03:00,  ,bob
2024-05-01T10:06:00,see you,bob
2024-05-01T10:20:00,late reply,bob
"""


@pytest.fixture
def chat(tmp_path):
    return write(tmp_path / "voices.csv", VOICES), write(tmp_path / "messages.csv", MESSAGES)


def test_candidates_follow_voice_in_time_order(chat, tmp_path):
    voices, messages = chat
    rows, summary = from_chat(voices, messages, out_path=tmp_path / "train.jsonl")
    assert [r["id"] for r in rows] == ["a", "b"]
    # strictly after 10:00:00; "On my way " differs from "on my way" under str.strip; blank text skipped
    assert rows[0]["candidates"] == ["on my way", "ok", "On my way ", "see you", "late reply"]
    assert rows[1]["candidates"] == ["see you", "late reply"]
    assert rows[0]["audio"] == "audio/a.wav"
    assert rows[0]["speaker"] == "ann" and rows[0]["timestamp"] == "2024-05-01T10:00:00"
    assert rows[0]["group"] == "g1" and "group" not in rows[1]  # empty CSV cell: no value
    assert "label" not in rows[0]
    assert summary["counts"]["voices"] == 2 and summary["counts"]["messages_used"] == 7


def test_k_and_key_distinctness(chat, tmp_path):
    voices, messages = chat
    rows, _ = from_chat(voices, messages, out_path=tmp_path / "m.jsonl", k=2)
    assert [r["candidates"] for r in rows] == [["on my way", "ok"], ["see you", "late reply"]]
    rows, _ = from_chat(voices, messages, out_path=tmp_path / "m.jsonl", k=3, key=lambda s: s.strip().lower())
    # the case-folding key merges "On my way " into the first spelling
    assert rows[0]["candidates"] == ["on my way", "ok", "see you"]


def test_window(chat, tmp_path):
    voices, messages = chat
    rows, summary = from_chat(voices, messages, out_path=tmp_path / "m.jsonl", window_seconds=120)
    # t < ts <= t + 120: 10:02:00 is exactly at the edge and counts
    assert rows[0]["candidates"] == ["on my way", "ok", "On my way "]
    assert rows[1]["candidates"] == ["see you"]
    rows, summary = from_chat(voices, messages, out_path=tmp_path / "m.jsonl", window_seconds=30)
    assert rows[0]["candidates"] == ["on my way"]
    assert rows[1]["candidates"] == []  # kept, unlabelled
    assert summary["counts"]["without_candidates"] == 1


def test_same_author(chat, tmp_path):
    voices, messages = chat
    rows, _ = from_chat(voices, messages, out_path=tmp_path / "m.jsonl", same_author=True)
    assert rows[0]["candidates"] == ["on my way", "On my way "]
    assert rows[1]["candidates"] == ["see you", "late reply"]


def test_same_author_needs_authors(tmp_path):
    voices = write(tmp_path / "v.csv", "audio,timestamp\nx.wav,100\n")
    messages = write(
        tmp_path / "m.jsonl", '{"timestamp": 101, "text": "hi"}\n\n{"timestamp": 102, "text": "yo"}\n'
    )
    with pytest.raises(DataError) as e:
        from_chat(voices, messages, out_path=tmp_path / "o.jsonl", same_author=True)
    assert problems_of(e) == [
        f"{voices}:1: missing column 'author' (needed by --same-author)",
        f"{messages}:1: missing field 'author' in every row (needed by --same-author)",
    ]
    # without the option the same files are fine
    rows, _ = from_chat(voices, messages, out_path=tmp_path / "o.jsonl")
    assert rows[0]["candidates"] == ["hi", "yo"] and "speaker" not in rows[0]


def test_labels_and_warning(chat, tmp_path):
    voices, messages = chat
    labels = write(tmp_path / "labels.csv", "id,label\na,on my way\nb,never said\n")
    rows, summary = from_chat(voices, messages, labels, out_path=tmp_path / "m.jsonl")
    assert rows[0]["label"] == "on my way" and rows[1]["label"] == "never said"
    assert summary["counts"]["labelled"] == 2
    assert summary["counts"]["label_not_in_candidates"] == 1
    assert any(w.startswith(f"{labels}:3: label 'never said' for id 'b'") for w in summary["warnings"])


def test_label_with_no_candidates_is_not_warned(tmp_path):
    voices = write(tmp_path / "v.csv", "id,audio,timestamp\nv1,x.wav,100\n")
    messages = write(tmp_path / "m.csv", "timestamp,text\n50,earlier\n")
    labels = write(tmp_path / "l.jsonl", '{"id": "v1", "label": "hello"}\n')
    rows, summary = from_chat(voices, messages, labels, out_path=tmp_path / "o.jsonl")
    assert rows == [{"id": "v1", "audio": "x.wav", "candidates": [], "label": "hello", "timestamp": "100"}]
    assert not any("not among" in w for w in summary["warnings"])


def test_tolerant_reading(tmp_path):
    # BOM, CRLF, blank lines, upper-case header, ';' separator, a quoted field spanning two lines
    text = '\ufeffTimestamp;Text;Author\r\n\r\n1700000000;"two\r\nlines";ann\r\n1700000001;x;bob\r\n\r\n'
    rows = read_table(write(tmp_path / "m.csv", text))
    assert [(n, r["text"]) for n, r in rows] == [(3, "two\r\nlines"), (5, "x")]
    assert rows[0][1]["timestamp"] == "1700000000" and rows[1][1]["author"] == "bob"
    jsonl = '\ufeff{"Text": "a", "timestamp": 1}\r\n\r\n  \r\n{"text": "b", "timestamp": 2}\r\n'
    assert read_table(write(tmp_path / "m.jsonl", jsonl)) == [
        (1, {"text": "a", "timestamp": 1}),
        (4, {"text": "b", "timestamp": 2}),
    ]
    array = '[\n  {"text": "a", "timestamp": 1},\n\n  {"text": "b",\n   "timestamp": 2}\n]\n'
    assert [n for n, _ in read_table(write(tmp_path / "m.json", array))] == [2, 4]


def test_timestamps_mixed_formats(tmp_path):
    voices = write(tmp_path / "v.jsonl", '{"audio": "x.wav", "timestamp": "2024-05-01T12:00:00+02:00"}\n')
    # 10:00:00Z is the same instant as the voice message (not a candidate); 10:00:01 UTC is after
    messages = write(
        tmp_path / "m.csv",
        "timestamp,text\n2024-05-01T10:00:00Z,same instant\n1714557601,one second later\n"
        "2024-05-01 10:00:02.5,naive is utc\n",
    )
    rows, summary = from_chat(voices, messages, out_path=tmp_path / "o.jsonl")
    assert rows[0]["candidates"] == ["one second later", "naive is utc"]
    assert rows[0]["timestamp"] == "2024-05-01T12:00:00+02:00"
    assert any("timezone" in w for w in summary["warnings"])
    assert parse_timestamp(1714557601) == (1714557601.0, True)
    assert parse_timestamp("2024-05-01T10:00:00") == (1714557600.0, False)
    for bad in ("yesterday", "", "1714557601000", True):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_audio_paths_and_extras(tmp_path):
    outside = tmp_path / "elsewhere" / "z.wav"
    voices = write(
        tmp_path / "export" / "voices.csv",
        f"id,audio,timestamp,duration\nv1,media/a.wav,1,1.5\nv2,{outside},2,\n",
    )
    write(tmp_path / "export" / "media" / "a.wav", "")  # exists: no warning for it
    messages = write(tmp_path / "export" / "messages.csv", "timestamp,text\n")
    rows, summary = from_chat(voices, messages, out_path=tmp_path / "export" / "train.jsonl")
    assert rows[0]["audio"] == "media/a.wav" and rows[0]["duration"] == "1.5"
    assert rows[1]["audio"] == str(outside) and "duration" not in rows[1]
    rows, _ = from_chat(voices, messages, out_path=tmp_path / "out" / "train.jsonl")
    assert rows[0]["audio"] == str(tmp_path / "export" / "media" / "a.wav")
    warnings = "\n".join(summary["warnings"])
    assert "1 audio file(s) not found" in warnings and "no messages" in warnings


def test_write_manifest_roundtrip(chat, tmp_path):
    voices, messages = chat
    out = tmp_path / "sub" / "train.jsonl"
    rows, _ = from_chat(voices, messages, out_path=out)
    write_manifest(rows, out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


# -- malformed input: every problem is reported, each with file:line and a reason --------------


def test_malformed_voices_and_labels_report_every_problem(tmp_path):
    voices = write(
        tmp_path / "voices.csv",
        "id,audio,timestamp\n"
        "v1,a.wav,2024-05-01T10:00:00\n"
        "v2,,2024-05-01T10:01:00\n"  # line 3: empty audio
        "v3,c.wav,soon\n"  # line 4: bad timestamp
        "v1,d.wav,2024-05-01T10:02:00\n"  # line 5: duplicate id
        "v5,e.wav\n",  # line 6: too few fields
    )
    messages = write(tmp_path / "messages.csv", "timestamp,text\n2024-05-01T10:00:05,hi\n31/12/2024,bad\n")
    labels = write(tmp_path / "labels.csv", "id,label\nv1,hi\nnope,hi\nv3,\n")
    with pytest.raises(DataError) as e:
        from_chat(voices, messages, labels, out_path=tmp_path / "o.jsonl")
    got = problems_of(e)
    assert got == [
        f"{voices}:6: malformed CSV: 2 fields, header has 3",
        f"{voices}:3: empty audio path",
        f"{voices}:4: unparseable timestamp 'soon' (expected ISO 8601 like 2024-05-01T12:30:00 or unix "
        "seconds)",
        f"{voices}:5: duplicate id 'v1' (first on line 2)",
        f"{messages}:3: unparseable timestamp '31/12/2024' (expected ISO 8601 like 2024-05-01T12:30:00 or "
        "unix seconds)",
        f"{labels}:3: unknown id 'nope' (not in the voice table)",
        f"{labels}:4: empty label for id 'v3'",
    ]
    assert f"{voices}:5: duplicate id" in str(e.value)


@pytest.mark.parametrize(
    "voices_text, name, expected",
    [
        ("audio,author\nx.wav,ann\n", "v.csv", "v.csv:1: missing column 'timestamp'"),
        ("\n\nid,timestamp\nx,1\n", "v.csv", "v.csv:3: missing column 'audio'"),
        ("audio,timestamp,label\nx.wav,1,hi\n", "v.csv", "v.csv:1: column 'label' is reserved"),
        ("", "v.csv", "v.csv:0: empty file: expected a header row"),
        ("audio,timestamp\n", "v.csv", "v.csv:0: no voice messages"),
        (
            '{"audio": "x.wav", "timestamp": 1}\n{"audio": "y.wav" "timestamp": 2}\n',
            "v.jsonl",
            "v.jsonl:2: malformed JSON: Expecting ',' delimiter at column 19",
        ),
        (
            '{"audio": "x.wav", "timestamp": 1}\n["y.wav", 2]\n',
            "v.jsonl",
            "v.jsonl:2: expected a JSON object, got list",
        ),
        (
            '{"audio": "x.wav", "timestamp": 1}\n\n{"timestamp": 2}\n',
            "v.jsonl",
            "v.jsonl:3: missing audio path",
        ),
        (
            '{"audio": "x.wav", "timestamp": 1}\n{"audio": "x.wav", "timestamp": 2}\n',
            "v.jsonl",
            "v.jsonl:2: duplicate id 'x' (first on line 1)",
        ),
        (
            '{"audio": "x.wav", "timestamp": 1700000000000}\n',
            "v.jsonl",
            "v.jsonl:1: timestamp 1700000000000 out of range (milliseconds? expected unix seconds)",
        ),
        (b"audio,timestamp\nx.wav,1\n\xff.wav,2\n", "v.csv", "v.csv:3: not valid UTF-8"),
    ],
)
def test_malformed_voice_table(tmp_path, voices_text, name, expected):
    path = tmp_path / name
    path.write_bytes(voices_text if isinstance(voices_text, bytes) else voices_text.encode())
    messages = write(tmp_path / "m.csv", "timestamp,text\n5,hi\n")
    with pytest.raises(DataError) as e:
        from_chat(path, messages, out_path=tmp_path / "o.jsonl")
    assert any(p.startswith(f"{tmp_path}/{expected}") for p in problems_of(e)), problems_of(e)


def test_missing_files_and_bad_options(tmp_path):
    with pytest.raises(DataError) as e:
        from_chat(tmp_path / "nope.csv", tmp_path / "nada.jsonl", out_path=tmp_path / "o.jsonl")
    assert problems_of(e) == [
        f"{tmp_path}/nope.csv:0: file not found",
        f"{tmp_path}/nada.jsonl:0: file not found",
    ]
    voices = write(tmp_path / "v.csv", "audio,timestamp\nx.wav,1\n")
    with pytest.raises(UserError, match="--k"):
        from_chat(voices, voices, out_path=tmp_path / "o.jsonl", k=0)
    with pytest.raises(UserError, match="--window"):
        from_chat(voices, voices, out_path=tmp_path / "o.jsonl", window_seconds=0)
    with pytest.raises(DataError, match="malformed JSON"):
        read_table(write(tmp_path / "t.jsonl", "{oops\n"))


# -- build_candidates on records ----------------------------------------------------------------


def test_build_candidates_ties_keep_file_order():
    voices = [Voice("v", Path("v.wav"), 10.0)]
    messages = [Message(12.0, "c"), Message(11.0, "a"), Message(12.0, "b"), Message(10.0, "tie")]
    assert build_candidates(voices, messages) == [["a", "c", "b"]]
    assert build_candidates(voices, [Message(11.0, "")], skip_empty=False) == [[""]]
    with pytest.raises(ValueError):
        build_candidates(voices, messages, k=0)


def _naive(voices, messages, k, window, same_author, key):
    out = []
    for v in voices:
        after = sorted(
            (
                m
                for m in messages
                if m.text.strip() and v.time < m.time and (window is None or m.time <= v.time + window)
            ),
            key=lambda m: m.time,
        )
        seen, cands = set(), []
        for m in after:
            if same_author and m.author != v.author:
                continue
            if key(m.text) not in seen and len(cands) < k:
                seen.add(key(m.text))
                cands.append(m.text)
        out.append(cands)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_build_candidates_matches_brute_force(seed):
    rng = random.Random(seed)
    words = ["ok", "OK", "yes", "no", " no", "later", "", "fine"]
    messages = [Message(float(rng.randint(0, 60)), rng.choice(words), rng.choice("ab")) for _ in range(80)]
    voices = [Voice(f"v{i}", Path("x.wav"), float(rng.randint(0, 60)), rng.choice("ab")) for i in range(20)]
    for k, window, same, key in [
        (3, None, False, str.strip),
        (5, 7.5, True, str.lower),
        (10, 20, False, str),
    ]:
        assert build_candidates(voices, messages, k, window, same, key) == _naive(
            voices, messages, k, window, same, key
        )


def test_docs_example_matches(tmp_path):
    """The tables and manifest lines in docs/chat-import.md are what from_chat produces."""
    text = DOCS.read_text()
    blocks = dict(re.findall(r"`([\w.]+)`:\s*\n+```\w*\n(.*?)```", text, flags=re.S))
    for name in ("voices.csv", "messages.csv", "labels.csv"):
        write(tmp_path / name, blocks[name])
    rows, _ = from_chat(
        tmp_path / "voices.csv",
        tmp_path / "messages.csv",
        tmp_path / "labels.csv",
        out_path=tmp_path / "train.jsonl",
        k=3,
        window_seconds=600,
    )
    assert rows == [json.loads(line) for line in blocks["train.jsonl"].splitlines()]


@pytest.mark.slow
def test_scale_100k_messages_10k_voices(tmp_path):
    rng = random.Random(0)
    messages = [
        Message(rng.uniform(0, 1e6), f"text {rng.randint(0, 5000)}", f"a{rng.randint(0, 50)}")
        for _ in range(100_000)
    ]
    voices = [
        Voice(f"v{i}", Path("x.wav"), rng.uniform(0, 1e6), f"a{rng.randint(0, 50)}") for i in range(10_000)
    ]
    start = time.perf_counter()
    cands = build_candidates(voices, messages, k=10, window_seconds=3600, same_author=True)
    assert time.perf_counter() - start < 10
    assert len(cands) == 10_000 and max(map(len, cands)) == 10
