"""Manifest parsing and validation on malformed inputs: each case asserts the line and the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from plcli.cli import app
from plcli.data.manifest import read_manifest
from plcli.data.validate import load_rows, validate_manifests
from plcli.errors import DataError


@pytest.fixture
def wav(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    return p


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _reasons(report):
    return {(p.line, p.reason) for p in report.problems}


def test_valid_jsonl_and_relative_paths(tmp_path, wav):
    m = _write(tmp_path / "m.jsonl", [
        json.dumps({"id": "a", "audio": "a.wav", "candidates": ["x", "y"], "label": "x", "extra": 5}),
        "",
        json.dumps({"id": "b", "audio": str(wav), "candidates": []}),
    ])
    rows, problems, n = read_manifest(m)
    assert problems == [] and n == 2
    assert rows[0].audio == wav.resolve() and rows[0].extra == {"extra": 5} and rows[0].tier == "exact"
    assert rows[1].tier == "unlabelled" and rows[1].line == 3


@pytest.mark.parametrize(
    "line,reason",
    [
        ('{"id": "a", "audio": "a.wav",}', "malformed JSON"),
        ('["a", "a.wav"]', "expected a JSON object"),
        ('{"audio": "a.wav"}', "missing field 'id'"),
        ('{"id": "a"}', "missing field 'audio'"),
        ('{"id": "a", "audio": "a.wav", "candidates": "x, y"}',
         "candidates must be a list of strings, got a string"),
        ('{"id": "a", "audio": "a.wav", "candidates": ["x", 3]}', "non-string entry"),
        ('{"id": "a", "audio": "a.wav", "label": 7}', "'label' must be a string"),
        ('{"id": "a", "audio": "missing.wav"}', "audio file not found"),
        ('{"id": "a", "audio": "a.wav", "candidates": ["Ok", "ok!"]}', "duplicated candidate"),
        ('{"id": "a", "audio": "a.wav", "candidates": ["x", "y"], "label": "z"}',
         "not among the row's candidates"),
    ],
)
def test_each_problem_reported_with_line(tmp_path, wav, line, reason):
    good = json.dumps({"id": "g", "audio": "a.wav", "candidates": ["x"]})
    m = _write(tmp_path / "m.jsonl", [good, line, good.replace('"g"', '"h"')])
    report = validate_manifests([m])
    assert [p.line for p in report.problems] == [2]
    assert reason in report.problems[0].reason
    assert str(report.problems[0]).startswith(f"{m}:2: ")
    assert len(report.rows) == 2 and report.n_input == 3 and report.n_rejected == 1


def test_all_problems_listed_not_just_first(tmp_path, wav):
    m = _write(tmp_path / "m.jsonl", [
        json.dumps({"id": "a", "audio": "a.wav"}),
        json.dumps({"id": "a", "audio": "a.wav"}),
        "{bad json",
        json.dumps({"id": "c", "audio": "nope.wav"}),
    ])
    report = validate_manifests([m])
    lines = sorted(p.line for p in report.problems)
    assert lines == [2, 3, 4]
    assert any("duplicate id 'a'" in p.reason and f"{m}:1" in p.reason for p in report.problems)


def test_audio_problems(tmp_path):
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32), 16000,
             subtype="FLOAT")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "text.wav").write_text("not audio at all")
    m = _write(tmp_path / "m.jsonl", [
        json.dumps({"id": "n", "audio": "nan.wav"}),
        json.dumps({"id": "e", "audio": "empty.wav"}),
        json.dumps({"id": "t", "audio": "text.wav"}),
    ])
    r = {p.line: p.reason for p in validate_manifests([m]).problems}
    assert "NaN or Inf" in r[1] and "empty" in r[2] and "unreadable audio" in r[3]


def test_csv_manifest_bom_crlf_and_bad_utf8(tmp_path, wav):
    text = 'id,audio,candidates,label\r\na,a.wav,"[""x"", ""y""]",x\r\nb,a.wav,not-json,\r\nc,a.wav,,\r\n'
    m = tmp_path / "m.csv"
    m.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"d,a.wav,[],\xff\xfe\r\n")
    rows, problems, n = read_manifest(m)
    assert [r.id for r in rows] == ["a", "c"] and rows[0].candidates == ["x", "y"] and rows[0].label == "x"
    assert {(p.line, p.reason.split(" ")[0]) for p in problems} == {(3, "candidates"), (5, "not")}
    assert n == 4


def test_duplicate_ids_across_manifests(tmp_path, wav):
    a = _write(tmp_path / "a.jsonl", [json.dumps({"id": "x", "audio": "a.wav"})])
    b = _write(tmp_path / "b.jsonl", [json.dumps({"id": "x", "audio": "a.wav"})])
    report = validate_manifests([a, b])
    assert len(report.problems) == 1 and report.problems[0].file == str(b)


def test_load_rows_skip_invalid_writes_rejects(tmp_path, wav):
    m = _write(tmp_path / "m.jsonl", [json.dumps({"id": "a", "audio": "a.wav"}), "oops",
                                      json.dumps({"id": "b", "audio": "zz.wav"})])
    with pytest.raises(DataError, match=r"m.jsonl:2: malformed JSON"):
        load_rows([m])
    rej = tmp_path / "rejects.jsonl"
    report = load_rows([m], skip_invalid=True, rejects=rej, log=lambda *_: None)
    rejected = [json.loads(line) for line in rej.read_text().splitlines()]
    assert len(report.rows) + len(rejected) == report.n_input == 3
    assert [r["line"] for r in rejected] == [2, 3]


def test_validate_cli_exit_codes(tmp_path, tiny_data):
    manifest, _ = tiny_data
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(manifest)])
    assert ok.exit_code == 0, ok.output
    assert "vocabulary size" in ok.output
    broken = manifest.parent / "broken.jsonl"
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace('"audio": "', '"audio": "missing/')
    lines[4] = "{not json"
    broken.write_text("\n".join(lines) + "\n")
    bad = runner.invoke(app, ["validate", str(broken)])
    assert bad.exit_code == 2
    assert f"{broken}:2:" in bad.output and f"{broken}:5:" in bad.output
    rej = tmp_path / "rej.jsonl"
    skip = runner.invoke(app, ["validate", str(broken), "--skip-invalid", "--rejects", str(rej)])
    assert skip.exit_code == 0 and len(rej.read_text().splitlines()) == 2
