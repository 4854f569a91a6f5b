"""A chat in a non-Latin script through the whole pipeline: a tiny Russian demo set (espeak-ng's
Russian voices), pretrain -> finetune -> distill with the default CTC settings, then predict."""

from __future__ import annotations

import json
import unicodedata

import yaml
from typer.testing import CliRunner

from plcli.cli import app
from plcli.models.classifier import load_model

TRAINER = {"batch_size": 16, "accelerator": "cpu", "devices": "1", "progress": False}


def _cyrillic(symbols: list[str]) -> bool:
    return all(s == " " or "CYRILLIC" in unicodedata.name(s, "") for s in symbols)


def test_a_russian_chat_trains_with_cyrillic_ctc_tokens(tmp_path, monkeypatch):
    from plcli.demo import DemoConfig, generate_demo

    monkeypatch.setenv("COLUMNS", "300")  # one log line per line
    data = tmp_path / "ru"
    generate_demo(data, DemoConfig(language="ru", phrases=6, candidates=3, train=36, test=0, train_speakers=4,
                                   test_speakers=1, exact_fraction=0.4, engines="espeak", workers=1))
    manifest = str(data / "train.jsonl")
    run = CliRunner().invoke
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(
        {"features": {"clip_seconds": 1.5}, "views": 2, "min_steps": 0, "trainer": TRAINER}))
    res = run(app, ["pretrain", manifest, "--out", str(tmp_path / "pre"), "--config",
                    str(tmp_path / "pre.yaml"), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "language: ru (detected" in res.output
    # pocketsphinx's US-English model has nothing to say on Cyrillic candidates, and says so
    assert "pronounceable" in res.output and "skipped" in res.output and "clips/s" not in res.output
    assert "transcript CTC: " in res.output and "phonemes (ru)" in res.output  # the exact labels, in Russian
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"trainer": TRAINER, "copies": 2, "min_steps": 0}))
    res = run(app, ["finetune", manifest, "--pretrained", str(tmp_path / "pre"), "--out",
                    str(tmp_path / "ft"), "--config", str(tmp_path / "ft.yaml"), "--epochs", "2", "--set",
                    "ctc.weight=1"])
    assert res.exit_code == 0, res.output
    (tmp_path / "di.yaml").write_text(yaml.safe_dump({"trainer": TRAINER, "ctc_rows": 8}))
    res = run(app, ["distill", manifest, "--teacher", str(tmp_path / "ft"), "--out", str(tmp_path / "di"),
                    "--config", str(tmp_path / "di.yaml"), "--epochs", "1", "--rounds", "1"])
    assert res.exit_code == 0, res.output
    assert "language: ru (the teacher's)" in res.output and "CTC head off" not in res.output

    for stage in ("pre", "ft", "di"):
        assert yaml.safe_load((tmp_path / stage / "config.yaml").read_text())["data"]["language"] == "ru"
    teacher = load_model(tmp_path / "ft")[0]
    assert teacher.has_ctc and teacher.tokenizer.kind == "char" and _cyrillic(teacher.tokenizer.symbols[1:])
    student = load_model(tmp_path / "di")[0]
    tok = student.tokenizer
    assert student.has_ctc and (_cyrillic(tok.symbols[1:]) if tok.kind == "char" else tok.voice == "ru")
    for start in tmp_path.glob("di/ctc*"):  # every CTC start: Cyrillic letters, or Russian phonemes
        t = load_model(start)[0].tokenizer
        assert _cyrillic(t.symbols[1:]) if t.kind == "char" else t.voice == "ru"

    res = run(app, ["predict", manifest, "--model", str(tmp_path / "di"), "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 36
