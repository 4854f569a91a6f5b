"""The benchmark's own pieces at tiny size: baseline label sources and training, fuzzy matching,
the table writer and chart, the cell cache, the grid's data preparation."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.report import ROW_NAMES, accuracy_chart, cached_cell, fmt_mean_std, mean_std, results_table
from plcli.data.labels import Vocabulary
from plcli.data.manifest import Row

needs_rapidfuzz = pytest.mark.skipif(
    importlib.util.find_spec("rapidfuzz") is None, reason="pip install plcli[bench]"
)
LABELS = ["see you tomorrow", "ok", "on my way", "call me later"]


def _rows() -> list[Row]:
    # 0: exact, 1-2: candidates only, 3: neither
    return [
        Row("a", Path("a.wav"), ["ok", "on my way"], label="ok"),
        Row("b", Path("b.wav"), ["see you tomorrow", "call me later"]),
        Row("c", Path("c.wav"), ["ok", "call me later", "on my way"]),
        Row("d", Path("d.wav"), []),
    ]


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def test_label_sources():
    from bench.baselines import label_source

    rows = _rows()
    vocab = Vocabulary.build(LABELS)
    truth = {"a": "ok", "b": "call me later", "c": "on my way", "d": "see you tomorrow"}
    o = label_source("oracle", rows, vocab, truth)
    assert o["index"].tolist() == [0, 1, 2, 3]
    assert [vocab.keys[j] for j in o["y"]] == ["ok", "call me later", "on my way", "see you tomorrow"]
    e = label_source("exact", rows, vocab)
    assert e["index"].tolist() == [0] and vocab.keys[e["y"][0]] == "ok"
    m = label_source("indicator-mse", rows, vocab)
    assert m["index"].tolist() == [0, 1, 2]  # the row with neither carries no target
    assert m["mask"].sum(1).tolist() == [1, 2, 3]  # the exact row's target is its label alone
    assert m["mask"][0, vocab.index("ok")] and (m["y"] == -1).all()
    with pytest.raises(ValueError):
        label_source("oracle", rows, vocab)
    with pytest.raises(ValueError):
        label_source("nope", rows, vocab)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not spin-wait when the machine is busy)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_indicator_mse_baseline_learns_and_ce_rows_train(tmp_path, one_thread):
    """Tiny separable 'features': the MSE row learns the candidate-consistent class; the CE rows run."""
    from bench.baselines import BaselineConfig, clips_per_second, evaluate_probs, train_baseline
    from plcli.config import FeatureConfig

    rng = np.random.default_rng(0)
    n, c, f, t = 48, 4, 16, 20
    vocab = Vocabulary.build(LABELS)
    y = np.arange(n) % c
    # (N, V=2, F, T): class k lights up mel bins [4k, 4k+4) in the first half of the clip (an onset,
    # as speech has: a constant per-bin offset is what the default cmn input norm removes)
    views = rng.normal(0, 0.3, size=(n, 2, f, t)).astype(np.float32)
    for i, k in enumerate(y):
        views[i, :, 4 * k : 4 * k + 4, : t // 2] += 3.0
    rows = []
    for i, k in enumerate(y):
        other = vocab.display[(k + 1 + i % 3) % c]
        rows.append(
            Row(
                f"r{i}",
                Path(f"{i}.wav"),
                [vocab.display[k], other],
                label=vocab.display[k] if i < 8 else None,
            )
        )
    cfg = BaselineConfig(
        student="tcresnet-small", epochs=1, batch_size=16, lr=1e-2, min_steps=40, accelerator="cpu"
    )
    spec_off = {"p_mixup": 0.0, "p_rrc": 0.0, "p_specaugment": 0.0}
    model, info = train_baseline("indicator-mse", rows, vocab, views, f, cfg, spec_augment=spec_off)
    assert info["training_rows"] == n and info["steps"] == 40
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(views[:, 0])), 1).numpy()
    test_rows = [
        Row(r.id, r.audio, r.candidates, label=vocab.display[k]) for r, k in zip(rows, y, strict=True)
    ]
    m = evaluate_probs(probs, test_rows, vocab)
    assert m["accuracy"] >= 0.9 and m["accuracy_within_candidates"] >= 0.9 and m["labelled_rows"] == n

    _, info_e = train_baseline(
        "exact",
        rows,
        vocab,
        views,
        f,
        BaselineConfig(student="tcresnet-small", epochs=1, batch_size=16, min_steps=3, accelerator="cpu"),
        spec_augment=spec_off,
    )
    assert info_e["training_rows"] == 8 and info_e["steps"] == 3 and info_e["student_init"] == "scratch"
    # init_encoder: the student is a pretrain run's encoder (architecture, input norm, weights), new head
    from plcli.models.encoders import build_encoder

    torch.manual_seed(5)
    enc = build_encoder("tcresnet", f, input_norm="utterance")
    payload = {"encoder": "tcresnet", "input_norm": "utterance", "state_dict": enc.state_dict()}
    torch.save(payload, tmp_path / "encoder.pt")
    model_i, info_i = train_baseline(
        "exact", rows, vocab, views, f,
        BaselineConfig(student="tcresnet-small", epochs=1, batch_size=16, lr=0.0, weight_decay=0.0,
                       min_steps=2, accelerator="cpu", init_encoder=str(tmp_path / "encoder.pt")),
        spec_augment=spec_off,
    )
    assert (info_i["student"], info_i["student_init"]) == ("tcresnet", "pretrained encoder")
    assert model_i.encoder.norm.mode == "utterance"
    # lr 0: the parameters are still the pretrain run's (BatchNorm statistics do move in training)
    params = dict(model_i.encoder.named_parameters())
    assert params and all(torch.equal(params[k], v) for k, v in enc.named_parameters())
    # with init_encoder it is distill's small-data student, batch included; an explicit batch is kept
    from plcli.distill import DistillConfig

    cap, full = DistillConfig().small_data_batch, DistillConfig().trainer.batch_size
    assert BaselineConfig(init_encoder="e.pt").resolved().batch_size == min(cap, full) < full
    assert BaselineConfig().resolved().batch_size == full
    assert BaselineConfig(init_encoder="e.pt", batch_size=16).resolved().batch_size == 16
    fc = FeatureConfig(clip_seconds=0.2, n_mels=f)
    cps = clips_per_second(model, fc, [np.zeros(fc.num_samples, np.float32)] * 8, threads=1, repeats=1)
    assert cps > 0 and math.isfinite(cps)


# ---------------------------------------------------------------------------------------------
# Speech-recogniser baseline: matching (the recogniser itself is exercised by the benchmark)
# ---------------------------------------------------------------------------------------------


@needs_rapidfuzz
def test_match_candidates_hand_made_transcripts():
    from bench.asr import match_candidates, normalise

    cands = ["See you tomorrow!", "OK", "On my way", "Don't call me later"]
    assert normalise("Don't  CALL me, later!!") == "dont call me later"
    assert match_candidates("see you to morrow", cands)[0] == 0  # word-boundary slip
    assert match_candidates("on my weigh", cands)[0] == 2  # near-homophone
    assert match_candidates("dont call me", cands)[0] == 3
    best, scores = match_candidates("okay", cands)
    assert best == 1 and len(scores) == 4 and scores[1] == max(scores)
    # 'ratio' does not reward a short candidate hidden inside a long transcript; WRatio does
    long = ["ok", "look at this"]
    assert match_candidates("look at this", long, "ratio")[0] == 1
    assert match_candidates("look at this", long, "WRatio")[1][0] >= 85
    with pytest.raises(ValueError):
        match_candidates("x", [])
    with pytest.raises(ValueError):
        match_candidates("x", ["a"], scorer="nope")


@needs_rapidfuzz
def test_match_ties_are_random_not_first():
    from bench.asr import match_candidates

    cands = ["alpha", "beta", "gamma", "delta"]
    picks = {match_candidates("", cands, rng=np.random.default_rng(s))[0] for s in range(40)}
    assert picks == {0, 1, 2, 3}
    assert match_candidates("", cands)[0] == 0  # no rng: deterministic


@needs_rapidfuzz
def test_asr_predict_with_given_transcripts():
    from bench.asr import asr_predict

    vocab = Vocabulary.build(LABELS)
    rows = _rows()
    p = asr_predict(rows, vocab, transcripts=["okay", "call me letter", "on my way", "see you"])
    assert [vocab.keys[j] for j in p["pred_all"]] == ["ok", "call me later", "on my way", "see you tomorrow"]
    assert p["pred_within"][:3].tolist() == [
        vocab.index("ok"),
        vocab.index("call me later"),
        vocab.index("on my way"),
    ]
    assert p["pred_within"][3] == -1  # no candidates
    with pytest.raises(ValueError):
        asr_predict(rows, vocab, transcripts=["x"])


def test_transcriber_runs_on_files(tmp_path):
    """pocketsphinx with its bundled model: text out for every file, timing figures, mono only."""
    pytest.importorskip("pocketsphinx")
    from bench.asr import Transcriber, transcribe_files
    from tests.conftest import write_dataset

    write_dataset(tmp_path, n=2, unlabelled=0)
    paths = sorted((tmp_path / "audio").glob("*.wav"))
    texts, timing = transcribe_files(paths, workers=1)
    assert len(texts) == 2 and all(isinstance(t, str) and t == t.strip() for t in texts)
    assert timing["workers"] == 1 and timing["decode_seconds"] > 0 and timing["clips_per_second"] > 0
    with pytest.raises(ValueError):
        Transcriber()(np.zeros((2, 100), np.float32))


# ---------------------------------------------------------------------------------------------
# Report and cell cache
# ---------------------------------------------------------------------------------------------


def _cells():
    return [
        {
            "row": "oracle",
            "rate": 0.01,
            "seed": 0,
            "accuracy": 0.90,
            "accuracy_within": 0.98,
            "seconds": {"train": 100.0},
            "clips_per_second": 500.0,
        },
        {
            "row": "oracle",
            "rate": 0.01,
            "seed": 1,
            "accuracy": 0.80,
            "accuracy_within": 0.96,
            "seconds": {"train": 120.0},
            "clips_per_second": 700.0,
        },
        {
            "row": "plcli",
            "rate": 0.01,
            "seed": 0,
            "accuracy": 0.60,
            "accuracy_within": 0.90,
            "seconds": {"pretrain": 300.0, "finetune": 10.0, "distill": 50.0},
            "clips_per_second": 600.0,
        },
        {
            "row": "plcli",
            "rate": 0.01,
            "seed": 1,
            "accuracy": 0.70,
            "accuracy_within": 0.94,
            "seconds": {"pretrain": 320.0, "finetune": 12.0, "distill": 54.0},
            "clips_per_second": 600.0,
        },
        {
            "row": "asr",
            "rate": 0.05,
            "seed": 0,
            "accuracy": 0.30,
            "accuracy_within": 0.50,
            "seconds": {"transcribe": 40.0},
            "clips_per_second": 9.5,
        },
    ]


def test_mean_std_and_format():
    m, s, n = mean_std([0.6, 0.7, None, float("nan")])
    assert n == 2 and m == pytest.approx(0.65) and s == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert math.isnan(mean_std([0.5])[1]) and mean_std([])[2] == 0
    assert fmt_mean_std([0.6, 0.7]) == "0.650 ± 0.071"
    assert fmt_mean_std([0.6]) == "0.600" and fmt_mean_std([]) == "-"


def test_results_table_values():
    table = results_table(_cells(), 0.01)
    lines = table.strip().splitlines()
    assert len(lines) == 4  # header, rule, oracle, plcli; the 5% recogniser cell is not in the 1% table
    oracle = [c.strip() for c in lines[2].strip("|").split("|")]
    plcli = [c.strip() for c in lines[3].strip("|").split("|")]
    assert oracle[0] == ROW_NAMES["oracle"] and oracle[1] == "0.850 ± 0.071" and oracle[3] == "1.00"
    assert plcli[0] == ROW_NAMES["plcli"] and plcli[1] == "0.650 ± 0.071" and plcli[2] == "0.920 ± 0.028"
    assert plcli[3] == f"{0.65 / 0.85:.2f}" and plcli[4] == "2"
    assert plcli[5] == "pretrain 310 s · finetune 11 s · distill 52 s" and plcli[6] == "600"
    no_oracle = results_table(_cells(), 0.05)
    assert "| - |" in no_oracle and "| 9.5 |" in no_oracle.splitlines()[2]


def test_grammar_row_without_all_class_accuracy(tmp_path):
    """The grammar row has no all-class accuracy (None): '-' in the table, no ratio, a never-heard line."""
    from bench.report import results_markdown, unseen_note

    g = {
        "row": "asr-grammar",
        "rate": 0.01,
        "seed": 0,
        "accuracy": None,
        "accuracy_within": 0.62,
        "accuracy_within_unseen": 0.5,
        "accuracy_within_seen": 0.64,
        "unseen_rows": 40,
        "seconds": {"decode": 8.0},
        "clips_per_second": 30.0,
        "finished": "2026-12-02 04:00",
    }
    cells = [*_cells(), g, {**g, "rate": 0.05}]
    line = [ln for ln in results_table(cells, 0.01).splitlines() if ROW_NAMES["asr-grammar"] in ln][0]
    cols = [c.strip() for c in line.strip("|").split("|")]
    assert cols[1] == "-" and cols[2] == "0.620" and cols[3] == "-" and cols[6] == "30.0"
    note = unseen_note(cells)
    assert note.count("\n- ") == 1  # one line although the cell is repeated at both rates
    assert "0.500 within candidates on the 40 never-heard test recordings (heard messages: 0.640)" in note
    assert results_markdown(cells).endswith(note) and unseen_note(_cells()) == ""
    assert accuracy_chart(cells, tmp_path / "acc.png").exists()


def test_accuracy_chart(tmp_path):
    path = accuracy_chart(_cells(), tmp_path / "sub" / "acc.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_cached_cell_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"row": "exact", "accuracy": 0.5}

    p = tmp_path / "cells" / "exact-r0.01-s0.json"
    assert cached_cell(p, compute) == {"row": "exact", "accuracy": 0.5}
    assert cached_cell(p, compute) == {"row": "exact", "accuracy": 0.5}
    assert len(calls) == 1 and json.loads(p.read_text())["accuracy"] == 0.5
    p.write_text("{broken")
    cached_cell(p, compute)
    assert len(calls) == 2


def test_failed_cell_is_not_stored(tmp_path):
    p = tmp_path / "c.json"

    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_cell(p, boom)
    assert not p.exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The grid's data preparation
# ---------------------------------------------------------------------------------------------


def _script():
    from bench import grid

    return grid


def test_speaker_split_and_label_rates():
    from plcli.data.labels import LabelNormalizer

    bench = _script()
    rows = [
        {
            "id": f"r{i}",
            "audio": f"{i}.wav",
            "speaker": f"s{i % 10}",
            "candidates": ["a", "b"] if i % 4 else [],
            "label": "zzz",
        }
        for i in range(200)
    ]
    truth = {r["id"]: "a" if i % 2 else "b" for i, r in enumerate(rows)}
    rows[1]["candidates"] = ["c", "d"]  # truth not among the candidates: never labelled
    fit, val = bench.split_speakers(rows, 0.2, 0)
    assert len({r["speaker"] for r in val}) == 2 and not {r["speaker"] for r in fit} & {
        r["speaker"] for r in val
    }
    labelled = bench.label_rows(fit, truth, 0.05, 0, LabelNormalizer())
    with_label = [r for r in labelled if "label" in r]
    assert len(with_label) == round(0.05 * len(fit)) and all(r["label"] == truth[r["id"]] for r in with_label)
    assert "r1" not in {r["id"] for r in with_label}
    other = bench.label_rows(fit, truth, 0.05, 1, LabelNormalizer())
    assert {r["id"] for r in other if "label" in r} != {r["id"] for r in with_label}  # seeds differ
    assert bench.label_rows(fit, truth, 0.05, 0, LabelNormalizer()) == labelled  # and are reproducible


def test_hold_out_messages_removes_held_messages_from_training():
    from bench.common import hold_out_messages
    from plcli.data.labels import LabelNormalizer

    norm = LabelNormalizer()
    msgs = [f"message {i}" for i in range(20)]
    rows = [{"id": f"r{i}", "audio": f"{i}.wav", "candidates": [msgs[(i + j) % 20] for j in range(5)]}
            for i in range(100)]
    rows.append({"id": "x", "audio": "x.wav"})  # no truth, no candidates: stays
    truth = {f"r{i}": msgs[i % 20].upper() + "!" for i in range(100)}  # other casing: the same message
    kept, moved, held = hold_out_messages(rows, truth, 0.25, 0, norm)
    assert len(held) == 5 and set(held) <= {norm(m) for m in msgs}
    assert {r["id"] for r in moved} == {
        r["id"] for r in rows if r["id"] in truth and norm(truth[r["id"]]) in held
    }
    assert len(kept) + len(moved) == len(rows) and "x" in {r["id"] for r in kept}
    for r in kept:  # no kept row says or offers a held message, and each keeps the rest of its candidates
        assert not {norm(t) for t in r.get("candidates", [])} & set(held)
        if r["id"] in truth:
            before = next(o for o in rows if o["id"] == r["id"])["candidates"]
            assert r["candidates"] == [t for t in before if norm(t) not in held]
    assert rows[0]["candidates"] == [msgs[j] for j in range(5)]  # the input rows are not changed
    assert hold_out_messages(rows, truth, 0.25, 0, norm) == (kept, moved, held)  # seeded
    assert hold_out_messages(rows, truth, 0.25, 1, norm)[2] != held
    assert hold_out_messages(rows, truth, 0.0, 0, norm) == (rows, [], [])


def test_no_vote_row_differs_from_plcli_only_in_the_vote(monkeypatch, tmp_path):
    """Row 6b runs the plcli row's stages with ``asr_prior: none``; row 6 leaves it at its default."""
    import plcli.models.classifier as classifier

    grid = _script()
    calls = []
    monkeypatch.setattr(grid, "run_stage", lambda name, out, o: calls.append((name, out.name, o)) or {})
    monkeypatch.setattr(grid, "pretrain", lambda *a, **k: {"dir": tmp_path / "pre", "seconds": 1.0})
    monkeypatch.setattr(grid, "finish_cell", lambda *a, **k: {"row": a[2]})
    monkeypatch.setattr(classifier, "load_model", lambda d: (None, None, None))
    a = grid.parse(["--bench-dir", str(tmp_path), "--accelerator", "cpu"])
    paths = {"manifests": {(0.05, 0): (tmp_path / "m.jsonl", tmp_path / "n.jsonl")}, "truth": tmp_path / "t"}
    for row in ("plcli", "plcli-no-vote"):
        assert grid.pipeline_cell(a, tmp_path, paths, row, 0.05, 0) == {"row": row}
    (f1, fo1), (d1, do1), (f2, fo2), (d2, do2) = ((n, o) for _, n, o in calls)
    assert (f1, d1, f2, d2) == ("plcli-r0.05-s0-finetune", "plcli-r0.05-s0-distill",
                                "plcli-no-vote-r0.05-s0-finetune", "plcli-no-vote-r0.05-s0-distill")
    assert fo1["asr_prior"] is None and fo2["asr_prior"] == "none"
    assert {k: v for k, v in fo1.items() if k != "asr_prior"} == {
        k: v for k, v in fo2.items() if k != "asr_prior"
    }
    assert do1["data.manifests"] == do2["data.manifests"]  # distill inherits the teacher's setting
    assert "plcli-no-vote" not in a.rows and "plcli-no-vote" in grid.parse(["--rows", "plcli-no-vote"]).rows


def test_teacher_only_cell_stops_after_finetune_in_the_plcli_runs(monkeypatch, tmp_path):
    """The learning curve's teacher-only cell runs pretrain and finetune (no distill), in the folders
    that the full plcli cell uses, so that cell later only adds distill."""
    import plcli.models.classifier as classifier

    grid = _script()
    calls = []
    monkeypatch.setattr(grid, "run_stage",
                        lambda name, out, o: calls.append((name, out.name)) or {"total_seconds": 2.0})
    monkeypatch.setattr(grid, "pretrain", lambda *a, **k: {"dir": tmp_path / "pre", "seconds": 1.0})
    monkeypatch.setattr(grid, "finish_cell", lambda *a, **k: {"row": a[2], "seconds": a[-1]})
    monkeypatch.setattr(classifier, "load_model", lambda d: (None, None, None))
    a = grid.parse(["--bench-dir", str(tmp_path), "--accelerator", "cpu"])
    paths = {"manifests": {(0.05, 0): (tmp_path / "m.jsonl", tmp_path / "n.jsonl")}, "truth": tmp_path / "t"}
    cell = grid.pipeline_cell(a, tmp_path, paths, "plcli", 0.05, 0, teacher_only=True)
    assert cell == {"row": "teacher", "seconds": {"pretrain": 1.0, "finetune": 2.0}}
    assert calls == [("finetune", "plcli-r0.05-s0-finetune")]
    full = grid.pipeline_cell(a, tmp_path, paths, "plcli", 0.05, 0, teacher=True)
    assert calls[1:] == [("finetune", "plcli-r0.05-s0-finetune"), ("distill", "plcli-r0.05-s0-distill")]
    assert full["teacher"] == cell


def test_each_label_rate_pretrains_on_its_own_manifest(monkeypatch, tmp_path):
    """Pretraining reads the exact labels (transcript CTC): a 1 % cell must not share the 5 % cell's
    encoder; the oracle (no rate) takes the highest rate's."""
    grid = _script()
    calls = []
    monkeypatch.setattr(grid, "run_stage",
                        lambda name, out, o: calls.append((out.name, o["data.manifests"])) or {})
    a = grid.parse(["--bench-dir", str(tmp_path), "--accelerator", "cpu"])
    m = {r: (tmp_path / f"m{r}.jsonl", tmp_path / f"n{r}.jsonl") for r in (0.01, 0.05)}
    paths = {"manifests": {(r, 0): v for r, v in m.items()}}
    grid.pretrain(a, tmp_path, paths, 0, 0.01)
    grid.pretrain(a, tmp_path, paths, 0)
    assert calls == [("pretrain-r0.01-s0", [str(m[0.01][0])]), ("pretrain-r0.05-s0", [str(m[0.05][0])])]


def test_prepare_writes_the_grid_manifests(tmp_path):
    from plcli.data.validate import load_rows
    from tests.conftest import write_dataset, write_truth

    bench = _script()
    demo = tmp_path / "demo"
    _, truth = write_dataset(demo, n=40, name="train.jsonl")
    write_dataset(demo, n=12, name="test.jsonl", seed=1, unlabelled=0, exact_every=1)
    write_truth(demo / "truth.jsonl", truth)
    a = bench.parse(
        [
            "--data",
            str(demo),
            "--bench-dir",
            str(tmp_path / "b"),
            "--rates",
            "0.1",
            "0.25",
            "--seeds",
            "0",
            "1",
            "--val-speakers",
            "0.34",
        ]
    )
    paths = bench.prepare(a, tmp_path / "b")
    c = paths["counts"]
    assert c["fit"] + c["val"] == 40 and c["val_speakers"] == 1 and c["test"] == 12
    val = load_rows([paths["val"]], log=lambda *m: None).rows
    assert all(r.label == truth[r.id] for r in val)
    for (rate, _seed), (manifest, nocand) in paths["manifests"].items():
        rows = load_rows([manifest], log=lambda *m: None).rows  # valid, audio found from bench/data
        assert len(rows) == c["fit"] and not {r.id for r in rows} & {r.id for r in val}
        assert sum(r.label is not None for r in rows) == round(rate * c["fit"])
        assert sum(bool(r.candidates) for r in rows) > 0
        stripped = load_rows([nocand], log=lambda *m: None).rows
        assert not any(r.candidates for r in stripped)
        assert [r.label for r in stripped] == [r.label for r in rows]


def test_grammar_row_alone_is_cached_and_reported(tmp_path):
    """``--rows asr-grammar``: real pocketsphinx grammar decodes of tone clips (any valid choice),
    the never-heard split (one test message is not among the training ones), cached choices."""
    pytest.importorskip("pocketsphinx")
    from tests.conftest import write_dataset, write_truth

    bench = _script()
    demo = tmp_path / "demo"
    _, truth = write_dataset(demo, n=24, name="train.jsonl")
    write_dataset(demo, n=10, n_classes=5, name="test.jsonl", seed=1, unlabelled=0, exact_every=1)
    write_truth(demo / "truth.jsonl", truth)
    args = ["--data", str(demo), "--bench-dir", str(tmp_path / "b"), "--rates", "0.25", "--seeds", "0",
            "--val-speakers", "0.34", "--rows", "asr-grammar", "--asr-workers", "1", "--asr-val-rows",
            "4"]  # fmt: skip
    assert bench.main(args) == 0
    cells = tmp_path / "b" / "cells"
    cell = json.loads((cells / "asr-grammar.json").read_text())
    assert cell["accuracy"] is None and 0.0 <= cell["accuracy_within"] <= 1.0 and cell["test_rows"] == 10
    assert cell["unseen_rows"] == 2 and 0.0 <= cell["accuracy_within_unseen"] <= 1.0  # rows 4 and 9
    assert (
        cell["val_accuracy_within"] is not None and cell["oov_rate"] == 0.0 and cell["clips_per_second"] > 0
    )
    choices = json.loads((cells / "asr-grammar-choices-test.json").read_text())
    assert len(choices["chosen"]) == 10 and all(-1 <= j < 3 for j in choices["chosen"])
    report = (tmp_path / "b" / "results.md").read_text()
    assert ROW_NAMES["asr-grammar"] in report and "never-heard test recordings" in report
    stamps = [p.stat().st_mtime_ns for p in sorted(cells.glob("*.json"))]
    assert bench.main(args) == 0
    assert [p.stat().st_mtime_ns for p in sorted(cells.glob("*.json"))] == stamps


def test_settings_guard(tmp_path):
    bench = _script()
    a = bench.parse(["--bench-dir", str(tmp_path), "--quick"])
    bench.check_settings(a, tmp_path)
    bench.check_settings(bench.parse(["--bench-dir", str(tmp_path), "--quick", "--seeds", "3"]), tmp_path)
    with pytest.raises(SystemExit, match="distill_epochs: 2 -> 7"):
        bench.check_settings(
            bench.parse(["--bench-dir", str(tmp_path), "--quick", "--distill-epochs", "7"]), tmp_path
        )


def test_published_report_is_a_generated_page_with_its_chart(tmp_path):
    """``--docs`` writes the report as a whole page (make bench: docs/results/grid.md) whose first line
    names the make target, and ``--png`` puts its chart where the page's link finds it."""
    grid = _script()
    doc, png = tmp_path / "docs" / "results" / "grid.md", tmp_path / "docs" / "benchmark-accuracy.png"
    doc.parent.mkdir(parents=True)
    doc.write_text("hand-written text that the page replaces\n")
    a = grid.parse(["--bench-dir", str(tmp_path / "b"), "--rates", "0.01", "--seeds", "0", "1",
                    "--rows", "oracle", "plcli", "--docs", str(doc), "--png", str(png)])
    grid.write_report(a, tmp_path / "b", _cells()[:4], {"fit": 4}, "2026-01-01 00:00")
    text = doc.read_text()
    assert text.splitlines()[0] == (
        "<!-- generated by `make bench`: do not edit by hand (the command that wrote it is below) -->")
    assert "hand-written" not in text and "| 6. plcli (defaults) | 0.650 ± 0.071 |" in text
    assert "![accuracy per row](../benchmark-accuracy.png)" in text and png.read_bytes()[:4] == b"\x89PNG"
    assert "![accuracy per row](accuracy.png)" in (tmp_path / "b" / "results.md").read_text()


def test_options_are_typed_configs():
    """The command lines build dataclasses (argparse stays at the edge); an option without its field fails."""
    import argparse
    import dataclasses

    from bench import curve
    from bench.common import BenchConfig, config_from

    grid = _script()
    a, c = grid.parse(["--quick"]), curve.parse(["--sizes", "40"])
    assert isinstance(a, grid.GridConfig) and isinstance(c, curve.CurveConfig) and isinstance(a, BenchConfig)
    assert (
        dataclasses.is_dataclass(a)
        and a.train == grid.QUICK["train"]
        and a.baseline_epochs == a.distill_epochs
    )
    assert c.data is None and c.sizes == [40] and set(a.SETTINGS) <= {f.name for f in dataclasses.fields(a)}
    with pytest.raises(TypeError, match="no field for the option"):
        config_from(grid.GridConfig, argparse.Namespace(**dataclasses.asdict(a), surprise=1))


@pytest.mark.slow
@needs_rapidfuzz
def test_benchmark_end_to_end_resumes(tmp_path, one_thread):
    """Every row on tiny tone data; a second run reuses every cell and writes the same report."""
    pytest.importorskip("pocketsphinx")
    from tests.conftest import write_dataset, write_truth

    bench = _script()
    demo = tmp_path / "demo"
    _, truth = write_dataset(demo, n=48, name="train.jsonl")
    write_dataset(demo, n=12, name="test.jsonl", seed=1, unlabelled=0, exact_every=1)
    write_truth(demo / "truth.jsonl", truth)
    doc = tmp_path / "doc.md"
    doc.write_text("# B\n\nbefore\n\nold\n\nafter\n")  # replaced whole: the page is generated
    args = [
        "--data",
        str(demo),
        "--bench-dir",
        str(tmp_path / "b"),
        "--rates",
        "0.25",
        "--seeds",
        "0",
        "--val-speakers",
        "0.34",
        "--views",
        "2",
        "--pretrain-epochs",
        "1",
        "--finetune-epochs",
        "2",
        "--distill-epochs",
        "1",
        "--baseline-min-steps",
        "2",
        "--asr-val-rows",
        "4",
        "--asr-workers",
        "1",
        "--accelerator",
        "cpu",
        "--docs",
        str(doc),
    ]
    assert bench.main(args) == 0
    cells = json.loads((tmp_path / "b" / "results.json").read_text())
    assert sorted(c["row"] for c in cells) == sorted(bench.DEFAULT_ROWS)
    for c in cells:
        if c["row"] == "asr-grammar":  # a grammar of the candidates has no all-class accuracy
            assert c["accuracy"] is None and c["oov_rate"] >= 0.0 and c["unseen_rows"] >= 0
        else:
            assert 0.0 <= c["accuracy"] <= 1.0, c
        assert 0.0 <= c["accuracy_within"] <= 1.0, c
        assert c["clips_per_second"] > 0
    files = sorted((tmp_path / "b" / "cells").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in files]
    report = (tmp_path / "b" / "results.md").read_text()
    assert bench.main(args) == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps
    text = doc.read_text()
    assert text.startswith("<!-- generated by `make bench`") and "| 6. plcli (defaults) |" in text
    assert "before" not in text and "after" not in text and "old" not in text
    assert "![accuracy per row](benchmark-accuracy.png)" in text
    assert (tmp_path / "benchmark-accuracy.png").exists()
    assert report.split("Command:")[1] == (tmp_path / "b" / "results.md").read_text().split("Command:")[1]
