"""One table reader (plcli.data.tables) for manifests and chat exports: each gets what the other could
read."""

from __future__ import annotations

import json

import pytest

from plcli.data.chat import read_table
from plcli.data.manifest import read_manifest
from plcli.errors import DataError


def test_manifest_reads_what_chat_exports_can(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    semi = tmp_path / "m.csv"
    semi.write_text('\ufeffID;Audio;Candidates;Label;note\r\nr1;a.wav;"[""y"", ""x""]";x;"two\r\nlines"\r\n',
                    encoding="utf-8")
    rows, problems, n = read_manifest(semi)
    assert problems == [] and n == 1
    assert rows[0].id == "r1" and rows[0].candidates == ["y", "x"] and rows[0].label == "x"
    assert rows[0].extra == {"note": "two\r\nlines"}
    array = tmp_path / "m.json"
    array.write_text(json.dumps([{"id": "r1", "audio": "a.wav"}, {"id": "r2", "audio": "a.wav"}], indent=1))
    rows, problems, _ = read_manifest(array)
    assert problems == [] and [(r.id, r.line) for r in rows] == [("r1", 2), ("r2", 6)]


def test_chat_tables_get_the_manifest_hints_and_keep_the_other_lines(tmp_path):
    t = tmp_path / "t.jsonl"
    t.write_text('{"text": "a", "timestamp": 1,}\n{"text": "b", "timestamp": 2}\n')
    with pytest.raises(DataError, match=r"t.jsonl:1: malformed JSON: .* \(trailing comma\?\)"):
        read_table(t)
    m = tmp_path / "m.csv"
    m.write_bytes(b"timestamp,text\n1,caf\xe9\n2,ok\n")
    with pytest.raises(DataError, match=r"m.csv:2: not valid UTF-8 at column 6") as e:
        read_table(m)
    assert "m.csv:3" not in str(e.value)
