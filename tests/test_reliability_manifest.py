"""Messy manifests: encoding, line ends, syntax, types, duplicates, odd paths, missing folders.

Each case runs ``plcli validate`` and checks the exit code, the FILE:LINE of every reported row, and
that with --skip-invalid the rejects file holds each rejected row once with its reasons and that
accepted + rejected == input rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from plcli.cli import app
from plcli.data.validate import load_rows, validate_manifests
from plcli.errors import DataError


@pytest.fixture
def clips(tmp_path):
    """Three short clips, one in a folder with spaces and non-ASCII characters."""
    rng = np.random.default_rng(0)
    paths = {
        "a": tmp_path / "a.wav",
        "b": tmp_path / "b.wav",
        "odd": tmp_path / "my clips" / "été 日本, 1.wav",
    }
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, rng.normal(0, 0.1, 4000).astype(np.float32), 16000)
    return paths


def jl(**row) -> str:
    return json.dumps(row, ensure_ascii=False)


def validate_skip(tmp_path, *manifests):
    """``plcli validate --skip-invalid``: (summary, rejects by (file name, line))."""
    rej, summ = tmp_path / "out" / "rejects.jsonl", tmp_path / "out" / "summary.json"
    res = CliRunner().invoke(
        app, ["validate", *map(str, manifests), "--skip-invalid", "--rejects", str(rej), "--json", str(summ)]
    )
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    s = json.loads(summ.read_text())
    rejects = {}
    if rej.exists():
        for line in rej.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            key = (r["file"].rsplit("/", 1)[-1], r["line"])
            assert key not in rejects, f"row {key} rejected twice"
            rejects[key] = r
    assert s["accepted"] + s["rejected"] == s["input_rows"]
    assert s["rejected"] == len(rejects)
    return s, rejects


def validate_strict(*manifests):
    res = CliRunner().invoke(app, ["validate", *map(str, manifests)])
    assert "Traceback" not in res.output
    return res


def test_bom_crlf_and_blank_lines_jsonl(tmp_path, clips):
    body = "\r\n".join(
        [
            jl(id="r1", audio="a.wav", candidates=["x", "y"], label="x"),
            "",
            "   ",
            jl(id="r2", audio="b.wav", candidates=["y"]),
            "",
        ]
    )
    m = tmp_path / "m.jsonl"
    m.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert validate_strict(m).exit_code == 0
    report = validate_manifests([m])
    assert [(r.id, r.line) for r in report.rows] == [("r1", 1), ("r2", 4)]  # physical line numbers
    assert report.rows[0].label == "x" and report.n_input == 2
    s, rejects = validate_skip(tmp_path, m)
    assert s["input_rows"] == 2 and not rejects


def test_bom_crlf_and_trailing_commas_csv(tmp_path, clips):
    m = tmp_path / "m.csv"
    m.write_bytes(
        b"\xef\xbb\xbfid,audio,candidates,label,\r\n"
        b'r1,a.wav,"[""x"", ""y""]",x,\r\n'
        b"\r\n"
        b"r2,b.wav,,,\r\n"
        b'r3,b.wav,"[""y""]",,,,\r\n'
    )  # more trailing commas than the header: still empty
    report = validate_manifests([m])
    assert report.ok, report.problems
    assert [(r.id, r.line) for r in report.rows] == [("r1", 2), ("r2", 4), ("r3", 5)]
    r1 = report.rows[0]
    assert r1.candidates == ["x", "y"] and r1.label == "x" and r1.extra == {}  # no '\r', no '' column
    assert report.rows[1].candidates == [] and report.rows[1].label is None


def test_trailing_comma_with_a_value_is_an_error(tmp_path, clips):
    m = tmp_path / "m.csv"
    m.write_text("id,audio\nr1,a.wav\nr2,b.wav,surprise\n")
    res = validate_strict(m)
    assert res.exit_code == 2 and f"{m}:3: malformed CSV: 3 fields, header has 2" in res.stderr


def test_non_utf8_bytes_reject_only_that_line(tmp_path, clips):
    m = tmp_path / "m.jsonl"
    m.write_bytes(
        jl(id="r1", audio="a.wav").encode()
        + b"\n"
        + b'{"id": "caf\xe9", "audio": "a.wav"}\n'  # Latin-1 'é'
        + jl(id="r3", audio="b.wav").encode()
        + b"\n"
    )
    res = validate_strict(m)
    assert res.exit_code == 2
    lines = [x for x in res.stderr.splitlines() if str(m) in x]
    assert lines == [f"{m}:2: not valid UTF-8 at column 12: re-save the file as UTF-8"]
    s, rejects = validate_skip(tmp_path, m)
    assert s["input_rows"] == 3 and s["accepted"] == 2 and list(rejects) == [("m.jsonl", 2)]
    assert "caf\ufffd" in rejects[("m.jsonl", 2)]["row"]  # the raw line, undecodable byte replaced


@pytest.mark.parametrize(
    "line,reason",
    [
        (
            '{"id": "r", "audio": "a.wav",}',
            "malformed JSON: Expecting property name enclosed in double quotes at "
            "column 30 (trailing comma?)",
        ),
        ('{"id": "r", "audio": "a.wav", "candidates": ["x", "y",]}', "(trailing comma?)"),
        ('{"id": "r", "audio": "a.wav"},', "(trailing comma after the object?)"),
        ("{'id': 'r', 'audio': 'a.wav'}", "(JSON needs double quotes)"),
        (
            '{"id": "r", "audio": "a.wav", "candidates": "x, y"}',
            "candidates must be a list of strings, got a string",
        ),
        (
            '{"id": "r", "audio": "a.wav", "candidates": {"x": 1}}',
            "candidates must be a list of strings, got dict",
        ),
        ('{"id": "r", "audio": "a.wav", "candidates": ["x", 2]}', "non-string entry"),
        (
            '{"id": "r", "audio": "a.wav", "candidates": ["x"], "label": 7}',
            "'label' must be a string, got int 7",
        ),
        ('{"id": "r", "audio": "a.wav", "label": ["x"]}', "'label' must be a string, got list"),
        ('{"id": ["r"], "audio": "a.wav"}', "'id' must be a string, got list"),
        ('{"id": "r", "audio": 12}', "'audio' must be a path string, got int"),
        ('{"id": "", "audio": "a.wav"}', "missing field 'id'"),
        ('"just a string"', "expected a JSON object, got str"),
    ],
)
def test_wrong_syntax_and_types_are_reported_with_line(tmp_path, clips, line, reason):
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join([jl(id="ok1", audio="a.wav"), "", line, jl(id="ok2", audio="b.wav")]) + "\n")
    res = validate_strict(m)
    assert res.exit_code == 2
    hits = [x for x in res.stderr.splitlines() if f"{m}:3:" in x]
    assert len(hits) == 1 and reason in hits[0], res.stderr
    s, rejects = validate_skip(tmp_path, m)
    assert (s["input_rows"], s["accepted"]) == (3, 2) and list(rejects) == [("m.jsonl", 3)]
    assert reason in rejects[("m.jsonl", 3)]["reasons"][0]


def test_numbers_in_csv_are_text(tmp_path, clips):
    """CSV has no types: a numeric id or label is read as text (and checked against the candidates)."""
    m = tmp_path / "m.csv"
    m.write_text(
        'id,audio,candidates,label\n7,a.wav,"[""7"", ""8""]",7\n8,b.wav,"[""1""]",2\n9,b.wav,"x, y",\n'
    )
    report = validate_manifests([m])
    assert report.rows[0].id == "7" and report.rows[0].label == "7"
    assert {(p.line, p.reason) for p in report.problems} == {
        (3, "label '2' is not among the row's candidates"),
        (4, 'candidates must be a JSON array, e.g. ["yes", "no"]'),
    }
    s, rejects = validate_skip(tmp_path, m)
    assert (s["input_rows"], s["accepted"], s["rejected"]) == (3, 1, 2)


def test_duplicate_ids_across_three_manifests(tmp_path, clips):
    ms = []
    for i, name in enumerate(["one.jsonl", "two.csv", "three.jsonl"]):
        p = tmp_path / f"part{i}" / name
        p.parent.mkdir()
        if name.endswith(".csv"):
            p.write_text(f"id,audio\nshared,{clips['a']}\nonly-two,{clips['b']}\n")
        else:
            p.write_text(
                jl(id="shared", audio=str(clips["a"]))
                + "\n"
                + jl(id=f"only-{i}", audio=str(clips["b"]))
                + "\n"
            )
        ms.append(p)
    res = validate_strict(*ms)
    assert res.exit_code == 2
    first = f"{ms[0]}:1"
    assert f"{ms[1]}:2: duplicate id 'shared' (first at {first})" in res.stderr
    assert f"{ms[2]}:1: duplicate id 'shared' (first at {first})" in res.stderr
    s, rejects = validate_skip(tmp_path, *ms)
    assert (s["input_rows"], s["accepted"], s["rejected"]) == (6, 4, 2)
    assert set(rejects) == {("two.csv", 2), ("three.jsonl", 1)}


def test_paths_with_spaces_and_non_ascii(tmp_path, clips):
    folder = tmp_path / "Exporté données"
    folder.mkdir()
    m = folder / "liste d'écoute.csv"
    rel = "../my clips/été 日本, 1.wav"
    m.write_text(f'id,audio,candidates\nü1,"{rel}","[""ça va"", ""日本""]"\n', encoding="utf-8")
    m2 = folder / "b.jsonl"
    m2.write_text(jl(id="ü2", audio=str(clips["odd"]), candidates=["ça va"]) + "\n", encoding="utf-8")
    res = validate_strict(m, m2)
    assert res.exit_code == 0, res.output
    report = validate_manifests([m, m2])
    assert [r.audio.resolve() for r in report.rows] == [clips["odd"].resolve()] * 2
    assert report.rows[0].candidates == ["ça va", "日本"] and report.durations["ü1"] == pytest.approx(0.25)
    # a stage reads the same rows
    assert [r.id for r in load_rows([m, m2]).rows] == ["ü1", "ü2"]


def test_missing_folders(tmp_path, clips):
    m = tmp_path / "m.jsonl"
    m.write_text(jl(id="r1", audio="a.wav") + "\n" + jl(id="r2", audio="no such folder/b.wav") + "\n")
    res = validate_strict(m)
    assert res.exit_code == 2
    assert f"{m}:2: audio file not found: {tmp_path / 'no such folder' / 'b.wav'}" in res.stderr
    # the manifest itself in a missing folder: exit 2, one line, no traceback
    gone = tmp_path / "gone" / "m.jsonl"
    res = validate_strict(gone)
    assert res.exit_code == 2 and f"{gone}:0: manifest not found" in res.stderr
    # a rejects file in a missing folder is created with its folders
    s, rejects = validate_skip(tmp_path, m)
    assert (s["accepted"], s["rejected"]) == (1, 1) and (tmp_path / "out").is_dir()
    # a stage stops on a missing manifest even with skip_invalid
    with pytest.raises(DataError, match="manifest not found"):
        load_rows([m, gone], skip_invalid=True, rejects=tmp_path / "r.jsonl")


def test_skip_invalid_does_not_hide_a_missing_manifest(tmp_path, clips):
    m = tmp_path / "m.jsonl"
    m.write_text(jl(id="r1", audio="a.wav") + "\n")
    res = CliRunner().invoke(
        app,
        [
            "validate",
            str(m),
            str(tmp_path / "nope.jsonl"),
            "--skip-invalid",
            "--rejects",
            str(tmp_path / "r.jsonl"),
        ],
    )
    assert res.exit_code == 2


def test_rejects_path_blocked_by_a_file_is_a_clean_error(tmp_path, clips):
    m = tmp_path / "m.jsonl"
    m.write_text(jl(id="r1", audio="missing.wav") + "\n")
    (tmp_path / "blocker").write_text("a file where a folder is expected")
    res = CliRunner().invoke(
        app, ["validate", str(m), "--skip-invalid", "--rejects", str(tmp_path / "blocker" / "rejects.jsonl")]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "error:" in res.stderr and "blocker" in res.stderr


def test_everything_at_once_counts_add_up(tmp_path, clips):
    """One manifest with every kind of problem, plus a second one: counts are exact and lines are right."""
    good = [jl(id=f"g{i}", audio="a.wav", candidates=["x", "y"]) for i in range(4)]
    lines = [
        good[0],  # 1 ok
        "",  # 2 blank
        '{"id": "t", "audio": "a.wav",}',  # 3 trailing comma
        good[1],  # 4 ok
        jl(id="c", audio="a.wav", candidates="x"),  # 5 candidates as a string
        jl(id="l", audio="a.wav", label=3),  # 6 label as a number
        jl(id="g0", audio="b.wav"),  # 7 duplicate id
        jl(id="m", audio="missing/x.wav"),  # 8 missing folder
        jl(id="dc", audio="a.wav", candidates=["Ok", "ok!"]),  # 9 duplicated candidate
        good[2],  # 10 ok
    ]
    m = tmp_path / "all.jsonl"
    m.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n" + b'{"id": "\xff"}\r\n' + b"\r\n")
    m2 = tmp_path / "more.csv"
    m2.write_text(f"id,audio\ng3,{clips['b']}\ng1,{clips['b']}\n")  # line 3: duplicate of all.jsonl:4
    s, rejects = validate_skip(tmp_path, m, m2)
    assert s["input_rows"] == 9 + 1 + 2
    assert s["accepted"] == 4 and s["rejected"] == 8
    assert sorted(rejects) == sorted([("all.jsonl", n) for n in (3, 5, 6, 7, 8, 9, 11)] + [("more.csv", 3)])
    assert "duplicate id 'g1'" in rejects[("more.csv", 3)]["reasons"][0]
