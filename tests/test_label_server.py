"""plcli label's HTTP server through urllib: state, audio, answers, skips, undo, refusals, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from label_fixtures import CANDS, serving, write_manifest
from typer.testing import CliRunner

from plcli.label.store import LabelStore, read_labels


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post(url: str, body, ctype: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path / "data")


def test_state_page_and_audio(manifest, tmp_path):
    with serving(manifest, tmp_path / "labels.jsonl") as (url, session, logged):
        status, headers, body = get(url + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"plcli label" in body
        _, _, body = get(url + "/api/state")
        s = json.loads(body)
        # r0..r5 and exact have candidates; exact is labelled by the manifest, gone has no audio
        assert s["progress"] == {"labelled": 1, "rows": 8, "left": 6, "session": 0, "skipped": 0,
                                 "missing_audio": 1}
        assert s["notices"] == [f"gone: audio file not found: {manifest.parent / 'audio' / 'gone.wav'}"]
        assert any("gone" in line and "not found" in line for line in logged)
        item = s["item"]
        assert item["id"].startswith("r") and item["reason"] is None and s["can_undo"] is False
        wav = (manifest.parent / "audio" / f"{item['id']}.wav").read_bytes()
        status, headers, body = get(f"{url}/audio/{item['id']}")
        assert (status, headers["Content-Type"], body) == (200, "audio/wav", wav)
        status, headers, body = get(f"{url}/audio/{item['id']}", {"Range": "bytes=10-19"})
        assert status == 206 and body == wav[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(wav)}"
        status, _, body = get(f"{url}/audio/nope")
        assert status == 404 and "no recording with id 'nope'" in json.loads(body)["error"]
        status, _, body = get(f"{url}/audio/gone")
        assert status == 404 and "audio file not found" in json.loads(body)["error"]
        assert get(url + "/nothing")[0] == 404


def test_audio_content_types(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    rows = []
    for ext in ("flac", "ogg", "opus", "mp3"):
        (root / f"a.{ext}").write_bytes(b"not really audio")  # the server sends bytes, it does not decode
        rows.append({"id": ext, "audio": f"a.{ext}", "candidates": ["x"]})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with serving(root / "m.jsonl", tmp_path / "l.jsonl") as (url, _, _):
        types = {ext: get(f"{url}/audio/{ext}")[1]["Content-Type"] for ext in ("flac", "ogg", "opus", "mp3")}
    assert types == {"flac": "audio/flac", "ogg": "audio/ogg", "opus": "audio/ogg", "mp3": "audio/mpeg"}


def test_answers_skip_and_undo_write_the_labels_file(manifest, tmp_path):
    labels = tmp_path / "labels.jsonl"
    with serving(manifest, labels) as (url, session, _):
        order = list(session.queue)
        first, second, third = order[:3]
        status, s = post(url + "/api/answer", {"id": first, "label": "  on my WAY!! "})
        assert status == 200 and s["item"]["id"] == second and s["progress"]["labelled"] == 2
        assert read_labels(labels) == {first: "On my way"}  # written as the candidate reads
        status, s = post(url + "/api/answer", {"id": second, "label": "Good night"})
        assert status == 400 and "not one of" in s["error"] and "nothing was written" in s["error"]
        assert post(url + "/api/answer", {"id": first, "label": "ok"})[0] == 409
        assert post(url + "/api/answer", {"id": "gone", "label": "ok"})[0] == 409
        assert post(url + "/api/answer", {"id": "nope", "label": "ok"})[0] == 404
        assert post(url + "/api/answer", {"id": second})[0] == 400
        assert post(url + "/api/answer", {"id": second, "label": "ok", "extra": 1})[0] == 400
        status, s = post(url + "/api/skip", {"id": second})
        assert s["item"]["id"] == third and s["progress"]["skipped"] == 1
        status, s = post(url + "/api/answer", {"id": third, "none_of_these": True})
        assert read_labels(labels) == {first: "On my way", third: None}
        status, s = post(url + "/api/undo", {})
        assert status == 200 and s["item"]["id"] == third and read_labels(labels) == {first: "On my way"}
        post(url + "/api/undo", {})
        status, s = post(url + "/api/undo", {})
        assert status == 400 and s["error"] == "nothing to undo in this session"
        assert read_labels(labels) == {}
        assert list(session.queue)[-1] == second  # the skipped row comes back last
        assert post(url + "/api/skip", b"{not json")[0] == 400
        assert post(url + "/api/skip", {"id": second}, ctype="text/plain")[0] == 415
    kinds = [next(k for k in ("label", "none_of_these", "undo") if k in r)
             for r in map(json.loads, labels.read_text().splitlines())]
    assert kinds == ["label", "none_of_these", "undo", "undo"]


def test_a_second_session_asks_only_what_is_left(manifest, tmp_path):
    labels = tmp_path / "labels.jsonl"
    with serving(manifest, labels) as (url, session, _):
        done = list(session.queue)[:2]
        post(url + "/api/skip", {"id": done[0]})
        for rid in done:
            post(url + "/api/answer", {"id": rid, "label": "ok"})
        skipped = list(session.queue)[0]
        post(url + "/api/skip", {"id": skipped})
    with open(labels, "ab") as f:
        f.write(b'{"id": "r')  # a kill in the middle of a line
    with serving(manifest, labels) as (url, session, logged):
        s = post(url + "/api/skip", {"id": session.queue[0]})[1]
        assert s["progress"]["labelled"] == 3 and s["progress"]["left"] == 4
        assert not set(done) & set(session.queue) and skipped in session.queue
        assert any("cut off" in line for line in logged)
        post(url + "/api/answer", {"id": session.queue[0], "label": "ok"})
    with pytest.warns(UserWarning, match="labels.jsonl:3: not valid JSON"):
        assert len(read_labels(labels)) == 3


def test_a_chat_export_is_labelled_with_the_ids_plcli_train_gives_it(tmp_path):
    """plcli label chat.zip: the export's manifest beside the labels file; train applies the answers by id."""
    from test_chat_exports import ANDROID_GB, GB_MEDIA, make_zip

    from plcli.train import TrainConfig, training_manifest

    export = make_zip(tmp_path / "chat.zip", ANDROID_GB, "WhatsApp Chat with Trip.txt", GB_MEDIA)
    labels = tmp_path / "labels.jsonl"
    with serving(export, labels) as (url, session, _):
        assert set(session.rows) == {f"PTT-20220713-WA000{i}" for i in (1, 3, 4)}
        assert post(url + "/api/answer", {"id": "PTT-20220713-WA0001", "label": "on my way"})[0] == 200
    assert (tmp_path / "labels.manifest.jsonl").is_file()
    cfg = TrainConfig(source=str(export), out=str(tmp_path / "run"), labels=str(labels))
    rows = [json.loads(line) for line in training_manifest(cfg, print).read_text().splitlines()]
    assert {r["id"]: r.get("label") for r in rows}["PTT-20220713-WA0001"] == "on my way"
    assert (tmp_path / "run" / "data" / rows[0]["audio"]).is_file()


def test_vanished_audio_is_a_message_not_a_crash(manifest, tmp_path):
    with serving(manifest, tmp_path / "labels.jsonl") as (url, session, _):
        rid = session.queue[0]
        (manifest.parent / "audio" / f"{rid}.wav").unlink()
        status, _, body = get(f"{url}/audio/{rid}")
        assert status == 404 and "audio file not found" in json.loads(body)["error"]
        assert post(url + "/api/skip", {"id": rid})[0] == 200


# -- with a model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight classifier over the test candidates: cheap, and its probabilities differ by row."""
    import torch

    from plcli.config import FeatureConfig
    from plcli.data.labels import Vocabulary
    from plcli.models.classifier import Classifier, save_model

    vocab = Vocabulary.build(CANDS)
    fc = FeatureConfig(clip_seconds=0.4)
    torch.manual_seed(0)
    model = Classifier("tcresnet-small", fc.n_mels, len(vocab)).eval()
    out = tmp_path_factory.mktemp("label_model")
    save_model(out / "model.pt", model, vocab, fc, "finetune")
    return out


def test_model_orders_by_uncertainty_spread_across_predictions(manifest, tmp_path, tiny_model):
    from plcli.data.labels import LabelNormalizer
    from plcli.label import select

    (manifest.parent / "audio" / "r5.wav").write_bytes(b"RIFF broken")
    with serving(manifest, tmp_path / "labels.jsonl", model=str(tiny_model)) as (url, session, _):
        assert any(n.startswith("r5:") and "unreadable" in n for n in session.notices)
        rows = [session.rows[f"r{i}"] for i in range(5)]
        probs, _ = select.model_probs(str(tiny_model), [r.audio for r in rows], [r.candidates for r in rows],
                                      None, log=lambda *_: None)
        assert all(np.isclose(p.sum(), 1.0) for p in probs)
        order, reasons = select.model_order([r.candidates for r in rows], probs, LabelNormalizer())
        assert list(session.queue) == [rows[i].id for i in order]
        s = json.loads(get(url + "/api/state")[2])
        assert s["item"]["id"] == rows[order[0]].id and s["item"]["reason"] == reasons[order[0]]
        assert s["item"]["reason"].startswith("model unsure:")


# -- the command -----------------------------------------------------------------------------------


def test_label_command_refuses_a_second_process_on_the_same_file(manifest, tmp_path):
    from plcli.cli import app

    labels = tmp_path / "labels.jsonl"
    with LabelStore(labels):
        res = CliRunner().invoke(app, ["label", str(manifest), "--labels", str(labels), "--no-browser"])
    assert res.exit_code == 2 and "in use by another" in res.output and "labels.jsonl" in res.output


def test_label_command_serves_until_interrupted(manifest, tmp_path):
    labels = tmp_path / "labels.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "plcli", "label", str(manifest), "--labels", str(labels),
                             "--port", "0", "--no-browser"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, lines = None, []
        deadline = time.time() + 60
        while url is None and time.time() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "labelling page:" in line:
                url = line.split("labelling page:")[1].split()[0].rstrip("/")
        assert url, "".join(lines)
        s = json.loads(get(url + "/api/state")[2])
        post(url + "/api/answer", {"id": s["item"]["id"], "label": s["item"]["candidates"][1]})
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[1]  # a loaded 2-core CI machine once took over 30 s
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert "1 answer(s) this session" in rest
    assert read_labels(labels) == {s["item"]["id"]: s["item"]["candidates"][1]}


def test_label_command_names_a_missing_manifest(tmp_path):
    from plcli.cli import app

    res = CliRunner().invoke(app, ["label", str(tmp_path / "no.jsonl"), "--labels", str(tmp_path / "l.jsonl"),
                                   "--no-browser"])
    assert res.exit_code == 2 and "no.jsonl: manifest not found" in " ".join(res.output.split())
