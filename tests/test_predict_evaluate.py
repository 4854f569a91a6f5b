"""predict and evaluate: metric functions on hand-made predictions, output records, and runs on tiny data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_dataset

from plcli.config import FeatureConfig
from plcli.data.features import FeatureCache
from plcli.data.labels import Vocabulary
from plcli.data.validate import load_rows
from plcli.errors import DataError, UserError
from plcli.evaluate import EvaluateConfig
from plcli.evaluate import run as evaluate
from plcli.metrics import (
    accuracy,
    auroc,
    calibration_bins,
    classification_metrics,
    confusion_matrix,
    covering_rate,
    expected_calibration_error,
    macro_f1,
    none_of_these,
    per_class_metrics,
    restricted_predictions,
    within_candidate_accuracy,
)
from plcli.models.classifier import Classifier, save_model
from plcli.predict import PredictConfig, prediction_records
from plcli.predict import run as predict

# -- metrics on hand-made predictions ---------------------------------------------------------------

# 5 rows, 3 classes; truth 0, 1, 2, 2 and one label outside the vocabulary (-1)
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # pred 0, right
        [0.5, 0.4, 0.1],  # pred 0, wrong; within {1, 2} -> 1, right
        [0.1, 0.3, 0.6],  # pred 2, right
        [0.2, 0.7, 0.1],  # pred 1, wrong; within {0, 2} -> 0, wrong
        [0.1, 0.1, 0.8],  # pred 2, truth unknown
    ]
)
Y = np.array([0, 1, 2, 2, -1])
MASK = np.array(
    [
        [False, False, False],  # no candidates
        [False, True, True],
        [True, False, True],
        [True, False, True],
        [True, True, False],
    ]
)


def test_accuracy_and_candidate_metrics_by_hand():
    pred = PROBS.argmax(1)
    assert pred.tolist() == [0, 0, 2, 1, 2]
    assert accuracy(pred, Y) == pytest.approx(2 / 5)  # the unknown label is an error
    assert restricted_predictions(PROBS, MASK).tolist() == [0, 1, 2, 0, 0]
    # rows with candidates: 1 right, 2 right, 3 wrong, 4 wrong (unknown truth)
    assert within_candidate_accuracy(PROBS, Y, MASK) == pytest.approx(2 / 4)
    # predictions inside the candidate sets: row 1 (0 not in {1,2}) no, row 2 yes, row 3 no, row 4 no
    assert covering_rate(pred, MASK) == pytest.approx(1 / 4)
    assert math.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))
    assert math.isnan(covering_rate(pred, np.zeros_like(MASK)))


def test_per_class_macro_f1_and_confusion_by_hand():
    pred = PROBS.argmax(1)  # 0, 0, 2, 1, 2 against 0, 1, 2, 2, -1
    pc = per_class_metrics(pred, Y, 3)
    # class 0: tp 1, predicted 2, support 1; class 1: tp 0, predicted 1, support 1;
    # class 2: tp 1, predicted 2, support 2
    np.testing.assert_allclose(pc["precision"], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(pc["recall"], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(pc["f1"], [2 / 3, 0.0, 0.5])
    assert pc["support"].tolist() == [1, 1, 2] and pc["predicted"].tolist() == [2, 1, 2]
    assert macro_f1(pred, Y, 3) == pytest.approx((2 / 3 + 0.0 + 0.5) / 3)
    # a class that neither occurs nor is predicted does not count in the macro average
    assert macro_f1(pred, Y, 5) == pytest.approx((2 / 3 + 0.0 + 0.5) / 3)
    assert confusion_matrix(pred, Y, 3).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]


def test_expected_calibration_error_by_hand():
    conf = np.array([0.9, 0.9, 0.6, 0.3])
    correct = np.array([True, False, True, False])
    # bins: {0.9, 0.9} acc 0.5 -> 2/4 * 0.4; {0.6} acc 1 -> 1/4 * 0.4; {0.3} acc 0 -> 1/4 * 0.3
    assert expected_calibration_error(conf, correct, 15) == pytest.approx(0.2 + 0.1 + 0.075)
    counts, mean_conf, acc = calibration_bins(conf, correct, 15)
    assert counts.sum() == 4 and counts[13] == 2 and counts[8] == 1 and counts[4] == 1
    assert np.isnan(acc[0]) and acc[13] == 0.5 and mean_conf[8] == pytest.approx(0.6)
    # bins are (k/n, (k+1)/n]: 0.6 = 9/15 closes bin 8, 0 falls in bin 0, 1 in the last bin
    assert calibration_bins(np.array([0.0, 1.0]), np.array([0, 1]), 15)[0][[0, 14]].tolist() == [1, 1]
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0
    assert expected_calibration_error(np.array([0.75, 0.75]), np.array([1, 0]), 2) == pytest.approx(0.25)


def test_classification_metrics_skips_rows_without_truth():
    y = np.array([0, 1, -2, 2, -1])  # row 2 has no truth
    m = classification_metrics(PROBS, y, MASK)
    keep = y != -2
    assert (
        m["labelled_rows"] == 4 and m["rows"] == 5 and m["candidate_rows"] == 4 and m["unknown_labels"] == 1
    )
    assert m["accuracy"] == pytest.approx(accuracy(PROBS.argmax(1)[keep], y[keep]))
    assert m["accuracy_within_candidates"] == pytest.approx(1 / 3)  # rows 1 (right), 3 and 4 (wrong)
    assert m["covering_rate"] == pytest.approx(1 / 4)  # needs no truth: all four candidate rows
    assert m["ece"] == pytest.approx(
        expected_calibration_error(PROBS.max(1)[keep], (PROBS.argmax(1) == y)[keep])
    )
    assert m["chance"] == pytest.approx(1 / 3) and m["mean_candidates"] == 2.0


# -- predict output records ----------------------------------------------------------------------------


def test_prediction_records_by_hand():
    vocab = Vocabulary.build(["a", "b", "c", "D"])
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.4, 0.1]])
    recs = prediction_records(["r0", "r1", "r2"], probs, [["a", "B!", "zzz"], [], ["x"]], vocab, top_k=2)
    r0, r1, r2 = recs
    assert r0 == {
        "id": "r0",
        "restricted": True,
        "top_k": [
            {"label": "b", "prob": pytest.approx(2 / 3, abs=1e-6)},
            {"label": "a", "prob": pytest.approx(1 / 3, abs=1e-6)},
        ],
        "top1": {"label": "D", "prob": 0.4},
        "candidates": [
            {"text": "a", "rank": 4, "prob": pytest.approx(1 / 3, abs=1e-6)},
            {"text": "B!", "rank": 3, "prob": pytest.approx(2 / 3, abs=1e-6)},
            {"text": "zzz", "rank": None, "prob": 0.0},
        ],
    }
    assert r1 == {
        "id": "r1",
        "restricted": False,
        "top_k": [{"label": "a", "prob": 0.4}, {"label": "b", "prob": 0.3}],
        "top1": {"label": "a", "prob": 0.4},
    }
    # only unknown candidates: unrestricted, each candidate listed without a rank
    assert r2["restricted"] is False and [t["label"] for t in r2["top_k"]] == ["c", "a"]
    assert r2["candidates"] == [{"text": "x", "rank": None, "prob": 0.0}]
    # a single known candidate gets probability 1
    one = prediction_records(["s"], probs[:1], [["c"]], vocab, top_k=3)[0]
    assert one["top_k"] == [{"label": "c", "prob": 1.0}] and one["candidates"][0]["rank"] == 2


def test_abstain_threshold_is_the_quantile_of_rows_that_hold_their_truth():
    from plcli.metrics import abstain_threshold

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), 200)
    mask = rng.random((200, 6)) < 0.5
    mask[:, 0] = True
    got = abstain_threshold(probs, mask, rate=0.1)
    score = 1.0 - (probs * mask).sum(1)
    assert got["rows"] == 200 and abs(float((score > got["threshold"]).mean()) - 0.1) <= 0.01
    assert abstain_threshold(probs, np.zeros((200, 6), bool)) is None


def test_auroc_against_every_pair_and_none_of_these_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        pos = rng.random(40) < 0.3
        pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in scores[pos] for b in scores[~pos]]
        assert auroc(scores, pos) == pytest.approx(np.mean(pairs))
    assert auroc(np.array([1.0, 2.0]), np.array([True, True])) is None
    assert auroc(np.array([0.1, 0.9, 0.5]), np.array([False, True, False])) == 1.0
    got = none_of_these(PROBS, MASK)
    assert np.isnan(got[0]) and got[1:] == pytest.approx([0.5, 0.3, 0.7, 0.8])


# -- runs on tiny data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    manifest, truth = write_dataset(root / "data", n=24)
    # new recordings never seen in training, half without candidates, no labels
    new, new_truth = write_dataset(root / "new", n=8, seed=7, name="new.jsonl", unlabelled=4)
    rows = [json.loads(line) for line in new.read_text().splitlines()]
    for r in rows:
        r.pop("label", None)
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vocab = Vocabulary.from_rows(load_rows([manifest]).rows)
    fc = FeatureConfig(clip_seconds=0.7)
    model_dir = root / "model"
    torch.manual_seed(0)
    model = Classifier("tcresnet-small", fc.n_mels, len(vocab)).eval()
    with torch.no_grad():
        model.head.net[-1].bias.copy_(torch.linspace(-1.0, 1.0, len(vocab)))  # a few distinct probabilities
    save_model(model_dir / "model.pt", model, vocab, fc, "distill")
    truth_file = root / "truth.csv"
    truth_file.write_text("id,label\n" + "".join(f"{k},{v}\n" for k, v in {**truth, **new_truth}.items()))
    return {
        "manifest": manifest,
        "new": new,
        "model": model_dir,
        "vocab": vocab,
        "fc": fc,
        "net": model,
        "truth": truth_file,
        "cache": root / "cache",
        "truth_map": {**truth, **new_truth},
    }


def _probs(world, manifest) -> tuple[list, np.ndarray]:
    """Independent reference: the rows' cached features through the Python model."""
    rows = load_rows([manifest]).rows
    _, feats = FeatureCache(world["cache"], world["fc"]).features([r.audio for r in rows])
    with torch.no_grad():
        probs = torch.softmax(world["net"](torch.from_numpy(np.asarray(feats, dtype=np.float32))), 1).numpy()
    return rows, probs


@pytest.mark.parametrize("which", ["manifest", "new"])
def test_predict_run(world, tmp_path, which):
    out = tmp_path / "pred.jsonl"
    summary = predict(
        PredictConfig(
            manifests=[str(world[which])],
            model=str(world["model"]),
            out=str(out),
            top_k=2,
            cache_dir=str(world["cache"]),
        ),
        log=lambda *_: None,
    )
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    rows, probs = _probs(world, world[which])
    vocab = world["vocab"]
    assert [r["id"] for r in recs] == [r.id for r in rows] and summary["rows"] == len(rows)
    assert summary["restricted"] == sum(bool(r.candidates) for r in rows) > 0
    assert summary["restricted"] < len(rows)  # rows without candidates too
    for rec, row, p in zip(recs, rows, probs, strict=True):
        j = int(p.argmax())
        assert rec["top1"] == {"label": vocab.display[j], "prob": pytest.approx(float(p[j]), abs=1e-5)}
        if row.candidates:
            idx = vocab.indices(row.candidates)
            q = p[idx] / p[idx].sum()
            best = np.argsort(-q)[:2]
            assert [t["label"] for t in rec["top_k"]] == [vocab.display[idx[b]] for b in best]
            np.testing.assert_allclose([t["prob"] for t in rec["top_k"]], q[best], atol=1e-5)
            ranks = (-p).argsort().argsort() + 1
            assert [c["rank"] for c in rec["candidates"]] == [
                int(ranks[vocab.index(c)]) for c in row.candidates
            ]
        else:
            assert rec["restricted"] is False and "candidates" not in rec
            assert [t["label"] for t in rec["top_k"]] == [vocab.display[k] for k in np.argsort(-p)[:2]]


def test_predict_none_of_these_and_abstain(world, tmp_path):
    out = tmp_path / "pred.jsonl"
    cfg = PredictConfig(manifests=[str(world["manifest"])], model=str(world["model"]), out=str(out),
                        cache_dir=str(world["cache"]), abstain=True, abstain_above=0.6)
    summary = predict(cfg, log=lambda *_: None)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    rows, probs = _probs(world, world["manifest"])
    vocab = world["vocab"]
    want = 0
    for rec, row, p in zip(recs, rows, probs, strict=True):
        if not row.candidates:
            assert "none_of_these" not in rec and "abstained" not in rec
            continue
        outside = 1.0 - p[vocab.indices(row.candidates)].sum()
        assert rec["none_of_these"] == pytest.approx(outside, abs=1e-5)
        assert rec["abstained"] == (outside > 0.6)
        want += outside > 0.6
    assert summary["abstained"] == want
    predict(PredictConfig(**{**cfg.to_dict(), "abstain": False}), log=lambda *_: None)
    assert not any("abstained" in json.loads(line) for line in out.read_text().splitlines())


def test_predict_reads_a_chat_export_and_writes_a_table(world, tmp_path):
    """A WhatsApp export straight into predict: its voice notes, as a CSV a person reads."""
    import csv

    from test_chat_exports import ANDROID_GB, GB_MEDIA, make_zip

    export = make_zip(tmp_path / "chat.zip", ANDROID_GB, "WhatsApp Chat with Trip.txt", GB_MEDIA)
    out = tmp_path / "voice_notes.csv"
    cfg = PredictConfig(manifests=[str(export)], model=str(world["model"]), out=str(out),
                        cache_dir=str(world["cache"]))
    summary = predict(cfg, log=lambda *_: None)
    table = list(csv.DictReader(out.open()))
    assert summary["rows"] == len(table) == 3
    assert [r["file"] for r in table] == [f"PTT-20220713-WA000{i}.opus" for i in (1, 3, 4)]
    assert [r["time"] for r in table] == ["2022-07-13T19:54:00", "2022-07-13T19:58:00", "2022-07-13T19:59:00"]
    manifest = [
        json.loads(line) for line in (tmp_path / "voice_notes.manifest.jsonl").read_text().splitlines()
    ]
    jl = tmp_path / "same.jsonl"
    predict(
        PredictConfig(
            **{**cfg.to_dict(), "manifests": [str(tmp_path / "voice_notes.manifest.jsonl")], "out": str(jl)}
        ),
        log=lambda *_: None,
    )
    for row, rec, m in zip(
        table, (json.loads(x) for x in jl.read_text().splitlines()), manifest, strict=True
    ):
        assert (
            row["message"] == rec["top_k"][0]["label"]
            and float(row["probability"]) == rec["top_k"][0]["prob"]
        )
        assert row["runner_up"] == (rec["top_k"][1]["label"] if len(rec["top_k"]) > 1 else "")
        assert row["id"] == m["id"] and row["speaker"] == m["speaker"]
    with pytest.raises(UserError, match="no such manifest or chat export"):
        predict(
            PredictConfig(**{**cfg.to_dict(), "manifests": [str(tmp_path / "gone.zip")]}), log=lambda *_: None
        )


def test_predict_validates_its_manifest(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = world["new"].read_text().splitlines()
    row = json.loads(lines[0])
    row["audio"] = str(world["new"].parent / row["audio"])
    missing = {**row, "id": "ghost", "audio": str(tmp_path / "missing.wav")}
    bad.write_text(json.dumps(row) + "\n" + json.dumps(missing) + "\n")
    out = tmp_path / "p.jsonl"
    cfg = PredictConfig(
        manifests=[str(bad)], model=str(world["model"]), out=str(out), cache_dir=str(world["cache"])
    )
    with pytest.raises(DataError, match="missing.wav"):
        predict(cfg, log=lambda *_: None)
    assert not out.exists()
    cfg.skip_invalid = True
    predict(cfg, log=lambda *_: None)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [row["id"]]
    assert "ghost" in (tmp_path / "p.jsonl.rejects.jsonl").read_text()


def test_evaluate_run_with_truth_and_report(world, tmp_path):
    report, js = tmp_path / "report", tmp_path / "metrics.json"
    cfg = EvaluateConfig(
        manifests=[str(world["manifest"]), str(world["new"])],
        model=str(world["model"]),
        truth=str(world["truth"]),
        json_out=str(js),
        report_dir=str(report),
        cache_dir=str(world["cache"]),
    )
    m = evaluate(cfg, log=lambda *_: None, console=_quiet_console())
    assert json.loads(js.read_text()) == m
    rows, p1 = _probs(world, world["manifest"])
    rows2, p2 = _probs(world, world["new"])
    probs = np.concatenate([p1, p2])
    vocab = world["vocab"]
    y = np.array([vocab.index(world["truth_map"][r.id]) for r in rows + rows2])
    mask = np.array([[vocab.display[j] in r.candidates for j in range(len(vocab))] for r in rows + rows2])
    ref = classification_metrics(probs, y, mask)
    for k in ("accuracy", "accuracy_within_candidates", "macro_f1", "covering_rate", "ece", "labelled_rows"):
        assert m[k] == pytest.approx(ref[k], abs=1e-6), k
    assert m["labelled_rows"] == len(rows) + len(rows2) and m["stage"] == "distill"
    assert sum(r["support"] for r in m["per_class"]) == m["labelled_rows"]
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "per_class.csv").read_text().startswith("label,precision,recall,f1,support")


def test_evaluate_reports_rows_whose_candidates_miss_the_truth(world, tmp_path):
    """Rows marked none_of_these (their candidates miss their label) pass validation; evaluate gives
    their count, the accuracy on the other rows and the AUROC of none_of_these between the two."""
    rows = [json.loads(line) for line in world["manifest"].read_text().splitlines()]
    rows = [{**r, "label": world["truth_map"][r["id"]]} for r in rows if r.get("candidates")]
    texts = sorted({c for r in rows for c in r["candidates"]})
    for r in rows[::2]:
        r["candidates"] = [t for t in texts if t != r["label"]][:3]
        r["none_of_these"] = True
    for r in rows:
        r["audio"] = str(world["manifest"].parent / r["audio"])
    man = tmp_path / "missing.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = evaluate(
        EvaluateConfig(manifests=[str(man)], model=str(world["model"]), cache_dir=str(world["cache"])),
        log=lambda *_: None,
        console=_quiet_console(),
    )
    loaded, probs = _probs(world, man)
    vocab = world["vocab"]
    mask = np.array([[vocab.display[j] in r.candidates for j in range(len(vocab))] for r in loaded])
    missed = np.array([bool(r.extra.get("none_of_these")) for r in loaded])
    assert m["missing_truth_rows"] == missed.sum() == len(rows[::2])
    assert m["none_of_these_auroc"] == pytest.approx(auroc(none_of_these(probs, mask), missed))
    y = np.array([vocab.index(r.label) for r in loaded])
    assert m["accuracy_truth_held"] == pytest.approx(float((probs.argmax(1) == y)[~missed].mean()))
    assert "missing_truth_rows" not in evaluate(
        EvaluateConfig(
            manifests=[str(world["manifest"])], model=str(world["model"]), cache_dir=str(world["cache"])
        ),
        log=lambda *_: None,
        console=_quiet_console(),
    )


def test_evaluate_uses_manifest_labels_without_truth(world, tmp_path):
    m = evaluate(
        EvaluateConfig(
            manifests=[str(world["manifest"])], model=str(world["model"]), cache_dir=str(world["cache"])
        ),
        log=lambda *_: None,
        console=_quiet_console(),
    )
    rows = load_rows([world["manifest"]]).rows
    assert m["labelled_rows"] == sum(r.label is not None for r in rows) > 0
    assert m["candidate_rows"] == sum(bool(r.candidates) for r in rows)


def _quiet_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=120)


def test_predict_and_evaluate_cli(world, tmp_path):
    from typer.testing import CliRunner

    from plcli.cli import app

    env = {"PLCLI_CACHE": str(world["cache"])}
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(
        app,
        ["predict", str(world["new"]), "--model", str(world["model"]), "--out", str(out), "--top-k", "1"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 8 and all(len(r["top_k"]) == 1 for r in recs)
    js = tmp_path / "m.json"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(world["new"]),
            "--model",
            str(world["model"]),
            "--truth",
            str(world["truth"]),
            "--json",
            str(js),
            "--report-dir",
            str(tmp_path / "r"),
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    assert "accuracy within candidates" in res.output and json.loads(js.read_text())["labelled_rows"] == 8
    res = CliRunner().invoke(app, ["evaluate", str(world["new"]), "--model", str(tmp_path)], env=env)
    assert res.exit_code == 2 and "model.pt" in res.output


INFERENCE_ONLY = """
import sys
from pathlib import Path

import torch

sys.path.insert(0, sys.argv[2])
from tests.conftest import write_dataset
from plcli.config import FeatureConfig
from plcli.data.labels import Vocabulary
from plcli.data.validate import load_rows
from plcli.models.classifier import Classifier, save_model

root = Path(sys.argv[1])
manifest, _ = write_dataset(root / "data", n=8)
vocab = Vocabulary.from_rows(load_rows([manifest]).rows)
fc = FeatureConfig(clip_seconds=0.7)
(root / "run").mkdir()
save_model(root / "run" / "model.pt", Classifier("tcresnet-small", fc.n_mels, len(vocab)).eval(), vocab, fc,
           "finetune")

from plcli import evaluate, export, predict

quiet = lambda *a, **k: None
predict.run(predict.PredictConfig(manifests=[str(manifest)], model=str(root / "run"),
                                  out=str(root / "p.jsonl")), log=quiet)
evaluate.run(evaluate.EvaluateConfig(manifests=[str(manifest)], model=str(root / "run"),
                                     json_out=str(root / "m.json")), log=quiet)
export.run(export.ExportConfig(model=str(root / "run"), out=str(root / "m.ts")), log=quiet)
assert (root / "p.jsonl").exists() and (root / "m.json").exists() and (root / "m.ts").exists()
heavy = ("lightning", "pytorch_lightning", "lightning_fabric")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in ("plcli.training", "plcli.pretrain",
             "plcli.finetune", "plcli.distill")))
"""


def test_inference_imports_neither_lightning_nor_training_code(tmp_path):
    """predict, evaluate and export, run end to end in a fresh interpreter, load no Lightning and no stage."""
    import subprocess
    import sys

    script = tmp_path / "infer_only.py"
    script.write_text(INFERENCE_ONLY)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parents[1])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PLCLI_CACHE": str(tmp_path / "c")},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
