"""The CTC head through the stages: finetune and distill train it, predict/evaluate rank candidate
texts with it (also texts the model never saw), on tiny generated audio through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from plcli.cli import app
from plcli.data.labels import LabelNormalizer
from plcli.models.classifier import load_model

vocab_key = LabelNormalizer()

TRAINER = {"batch_size": 16, "accelerator": "cpu", "devices": "1", "progress": False}


def phase_seconds(m: dict) -> float:
    """The CTC phase's time in a distill run's metrics: every start's (one start: ``ctc_phase``)."""
    return sum(s["total_seconds"] for s in m.get("ctc_starts") or [m["ctc_phase"]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """pretrain -> finetune (CTC head) -> distill (1 round, CTC head) on tiny data, shared."""
    import os

    from tests.conftest import write_dataset, write_truth

    root = tmp_path_factory.mktemp("ctcpipe")
    os.environ["PLCLI_CACHE"] = str(root / "cache")
    manifest, truth = write_dataset(root / "data", n=48)
    test_manifest, test_truth = write_dataset(root / "data", n=12, seed=1, unlabelled=0, name="test.jsonl")
    (root / "pre.yaml").write_text(yaml.safe_dump({"features": {"clip_seconds": 1.0}, "views": 2,
                                                   "min_steps": 0, "trainer": TRAINER}))
    run = CliRunner().invoke
    res = run(app, ["pretrain", str(manifest), "--out", str(root / "pre"), "--config", str(root / "pre.yaml"),
                    "--epochs", "1"])
    assert res.exit_code == 0, res.output
    (root / "ft.yaml").write_text(yaml.safe_dump({"trainer": TRAINER, "copies": 2, "min_steps": 0}))
    tf = write_truth(root / "truth.jsonl", truth)
    res = run(app, ["finetune", str(manifest), "--pretrained", str(root / "pre"), "--out", str(root / "ft"),
                    "--config", str(root / "ft.yaml"), "--epochs", "2", "--set", "ctc.weight=1", "--truth",
                    str(tf)])
    assert res.exit_code == 0, res.output
    (root / "di.yaml").write_text(yaml.safe_dump({"trainer": TRAINER, "ctc_rows": 8}))
    res = run(app, ["distill", str(manifest), "--teacher", str(root / "ft"), "--out", str(root / "di"),
                    "--config", str(root / "di.yaml"), "--epochs", "2", "--rounds", "1",
                    "--ranking-manifest", str(test_manifest)])
    assert res.exit_code == 0, res.output
    return root, manifest, test_manifest, write_truth(root / "test_truth.jsonl", test_truth)


def test_finetune_trains_a_ctc_head_on_the_frozen_encoder(runs):
    root = runs[0]
    m = json.loads((root / "ft" / "metrics.json").read_text())
    assert 0.0 <= m["ctc_acc_within"] <= 1.0 and 0.0 <= m["ctc_disambiguation"] <= 1.0
    assert m["ranking"]["rows"] > 0 and "grid" in m["ranking"]
    assert m["ranking"]["new_message_rows"] == 0  # held-out exact rows: their messages are the vocabulary's
    model, vocab, _ = load_model(root / "ft")
    assert model.has_ctc and model.extra["ranking"]["ctc_weight"] == m["ranking"]["ctc_weight"]
    # frozen: the encoder's weights are the pretrained ones; the CTC head trained
    from plcli.pretrain import load_pretrained

    pre = load_pretrained(root / "pre").encoder.state_dict()
    for k, v in model.encoder.state_dict().items():
        if not any(s in k for s in ("running_", "num_batches")):  # BatchNorm statistics are re-estimated
            assert torch.equal(v, pre[k]), k
    fresh = type(model.ctc_head)(**model.ctc_head.kwargs)
    assert any(not torch.equal(a, b) for a, b in zip(model.ctc_head.state_dict().values(),
                                                     fresh.state_dict().values(), strict=True))


def test_distill_student_has_a_ctc_head_and_a_ranking(runs):
    root, _, test_manifest, _ = runs
    m = json.loads((root / "di" / "metrics.json").read_text())
    assert m["ranking"]["chosen_on"].startswith(str(test_manifest))
    model, vocab, _ = load_model(root / "di")
    assert model.has_ctc and model.tokenizer.kind == "char"
    x = torch.randn(2, 64, 51)
    logits, lp = model.forward_both(x)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert lp.shape[1] == 2 and torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:2]), atol=1e-4)
    cfg = yaml.safe_load((root / "di" / "config.yaml").read_text())
    assert cfg["ctc"]["weight"] == 1.0


def test_tune_counts_validation_rows_that_say_a_new_message(runs):
    from plcli.ranking import tune

    root = runs[0]
    model, vocab, _ = load_model(root / "di")
    known = vocab.display[:2]
    cands = [[*known, "a message nobody typed"], [*known, "another new one"], list(known)]
    truths = ["a message nobody typed", known[1], known[0]]
    feats = np.random.default_rng(0).standard_normal((3, 64, 51)).astype(np.float32)
    out = tune(model, vocab, feats, cands, truths, "three rows")
    assert out["rows"] == 3 and out["new_message_rows"] == 1 and out["chosen_on"] == "three rows"


def test_distill_trains_the_ctc_head_in_a_phase_of_its_own(runs):
    """The CTC phase (RUN_DIR/ctc) keeps the last round's classifier exactly, BatchNorm statistics
    included, trains only the new CTC head, and its model is the run's."""
    root = runs[0]
    m = json.loads((root / "di" / "metrics.json").read_text())
    assert m["ctc_phase"]["epochs"] == 2 and len(m["rounds"]) == 1
    # the default CTC refit: one, a third of the phase's epochs (at least 1)
    assert [r["epochs"] for r in m["ctc_refits"]] == [1]
    assert m["total_seconds"] == pytest.approx(m["rounds"][0]["total_seconds"] + phase_seconds(m)
                                               + m["ctc_refits"][0]["total_seconds"])
    last = load_model(root / "di" / "round1")[0]
    phase = load_model(root / "di" / m["ctc_phase"].get("dir", "ctc"))[0]
    assert not last.has_ctc and phase.has_ctc
    ref = last.state_dict()
    for k, v in phase.state_dict().items():
        if not k.startswith("ctc_head."):
            assert torch.equal(v, ref[k]), k
    fresh = type(phase.ctc_head)(**phase.ctc_head.kwargs)
    assert any(not torch.equal(a, b) for a, b in zip(phase.ctc_head.state_dict().values(),
                                                     fresh.state_dict().values(), strict=True))
    assert (root / "di" / "model.pt").read_bytes() == (root / "di" / "ctc2" / "model.pt").read_bytes()


def test_predict_ranks_texts_the_model_never_saw(runs, tmp_path):
    root, _, test_manifest, _ = runs
    rows = [json.loads(line) for line in test_manifest.read_text().splitlines()]
    for r in rows:
        r["audio"] = str(test_manifest.parent / r["audio"])
        r["candidates"] = [*r["candidates"], "a completely new message"]
        r.pop("label", None)
    man = tmp_path / "new.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pred.jsonl"
    # the model's own ranking: with Whisper installed, --fallback auto would hand these rows to it
    res = CliRunner().invoke(app, ["predict", str(man), "--model", str(root / "di"), "--out", str(out),
                                   "--fallback", "none"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == len(rows)
    for rec, row in zip(recs, rows, strict=True):
        assert rec["restricted"] and rec["decided_by"] in ("both", "ctc", "classifier", "combined")
        texts = [c["text"] for c in rec["candidates"]]
        assert texts == row["candidates"]
        new = rec["candidates"][-1]
        assert new["known"] is False and new["rank"] is None and np.isfinite(new["ctc"])
        assert 0.0 <= new["prob"] <= 1.0
        assert abs(sum(c["prob"] for c in rec["candidates"]) - 1.0) < 1e-3
        keys = {vocab_key(t) for t in texts}
        assert {vocab_key(t["label"]) for t in rec["top_k"]} <= keys
        assert any(not t["known"] for t in rec["top_k"]) or len(rec["top_k"]) < len(texts)


def test_evaluate_reports_each_scorer(runs, tmp_path):
    root, _, test_manifest, test_truth = runs
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", str(test_manifest), "--model", str(root / "di"), "--truth",
                                   str(test_truth), "--json", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    for k in ("accuracy_within_candidates", "accuracy_within_candidates_classifier",
              "accuracy_within_candidates_ctc"):
        assert 0.0 <= m[k] <= 1.0, k
    assert sum(m["decided_by"].values()) == m["labelled_candidate_rows"]
    assert m["unknown_truth_rows"] == 0
    assert 0.0 <= m["ece_within_candidates"] <= 1.0 and m["ranking"]["temperature"] > 0
    assert "of the candidate probabilities" in res.output


def test_export_says_it_leaves_the_ctc_head_out(runs, tmp_path):
    root = runs[0]
    out = tmp_path / "model.ts"
    res = CliRunner().invoke(app, ["export", "--model", str(root / "di"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "CTC head" in res.output
    meta = json.loads((tmp_path / "model.vocab.json").read_text())
    assert any("CTC head" in x for x in meta["left_out"])
    ts = torch.jit.load(str(out))
    probs = ts(torch.zeros(16000))
    assert probs.shape == (1, len(meta["labels"]))


def test_ranked_logits_follow_the_teachers_combined_ranking(runs):
    """A CTC refit's targets: the candidate-restricted softmax of ``ranked_logits`` is the softmax of
    the combined ranking's scores (a class named by two candidate texts takes the better score); a
    row without known candidates keeps the closed-set logits."""
    from plcli.data.manifest import Row
    from plcli.distill import open_teacher, ranked_logits
    from plcli.ranking import candidate_classes, model_scores, rank, ranking_of, softmax_rows

    root = runs[0]
    teacher = open_teacher(str(root / "di"))
    names = teacher.vocab.display
    cands = [names[:3], [names[1], names[1].upper(), names[2]], ["never heard of it"], []]
    rows = [Row(id=f"r{i}", audio="x.wav", candidates=c) for i, c in enumerate(cands)]
    feats = torch.randn(len(rows), 64, 51).numpy()
    out = ranked_logits(teacher, rows, feats)
    assert out.shape == (len(rows), len(names))

    scores = model_scores(teacher.model, feats, [r.candidates for r in rows])
    probs = np.exp(scores["logits"] - scores["logits"].max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = candidate_classes([r.candidates for r in rows], teacher.vocab)
    ranking = ranking_of(teacher.model.extra)
    # stored, not used here
    assert ranking["temperature"] > 0 and "temperature" in teacher.model.extra["ranking"]
    combined = rank(probs, scores, classes, ranking)["combined"]
    # row 0: three distinct known candidates
    restricted = torch.softmax(torch.from_numpy(out[0, [0, 1, 2]]), 0).numpy()
    np.testing.assert_allclose(restricted, softmax_rows(combined[:1, :3])[0], rtol=1e-4, atol=1e-6)
    assert out[0, [0, 1, 2]].max() == 0.0  # the best candidate at 0, the other classes far below
    # row 1: the same class twice (text normalisation), the better of its two scores
    assert out[1, 1] - out[1, 2] == pytest.approx(float(max(combined[1, 0], combined[1, 1]) - combined[1, 2]),
                                                  rel=1e-4, abs=1e-5)
    # rows 2 and 3: no known candidate, the closed-set logits
    np.testing.assert_allclose(out[2:], scores["logits"][2:], rtol=1e-5)


def test_distill_ctc_refit_continues_the_ctc_head_on_the_ranking(runs, tmp_path):
    """``--set ctc_refits=1``: RUN_DIR/ctc2 keeps the classifier of the last round, its targets are the
    CTC phase's ranking (each candidate row's favourite is that model's top candidate), and its model is
    the run's."""
    root, manifest, test_manifest, _ = runs
    res = CliRunner().invoke(app, ["distill", str(manifest), "--teacher", str(root / "ft"), "--out",
                                   str(tmp_path / "di"), "--config", str(root / "di.yaml"), "--epochs", "1",
                                   "--rounds", "1",
                                   "--set", "ctc_refits=1", "--set", "ctc_refit_epochs=2",
                                   "--ranking-manifest", str(test_manifest)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "di"
    m = json.loads((run / "metrics.json").read_text())
    assert m["ctc_phase"]["epochs"] == 1 and [r["epochs"] for r in m["ctc_refits"]] == [2]
    assert m["total_seconds"] == pytest.approx(m["rounds"][0]["total_seconds"] + phase_seconds(m)
                                               + m["ctc_refits"][0]["total_seconds"])
    assert yaml.safe_load((run / "config.yaml").read_text())["ctc_refits"] == 1
    kept = m["ctc_phase"].get("dir", "ctc")
    last, phase, refit = (load_model(run / n)[0] for n in ("round1", kept, "ctc2"))
    ref = last.state_dict()
    for k, v in refit.state_dict().items():
        if not k.startswith("ctc_head."):
            assert torch.equal(v, ref[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(refit.ctc_head.state_dict().values(),
                                                     phase.ctc_head.state_dict().values(), strict=True))
    assert (run / "model.pt").read_bytes() == (run / "ctc2" / "model.pt").read_bytes()
    # the targets follow the CTC phase's ranking: each candidate row's favourite is its top candidate
    from plcli.config import DataConfig
    from plcli.data.datasets import holdout_ids, open_cache
    from plcli.data.validate import load_rows
    from plcli.distill import load_targets
    from plcli.inference import load_predictor, softmax
    from plcli.ranking import candidate_classes, model_scores, rank, ranking_of

    meta = json.loads((run / "ctc2" / "targets.json").read_text())
    tgt, kind = load_targets(run / "ctc2", meta["key"])
    model, vocab, features, _ = load_predictor(run / kept)
    rows = load_rows([str(manifest)], vocab.normalizer).rows
    held = holdout_ids([r.id for r in rows if r.label is not None], m["held_out"]["fraction"],
                       m["held_out"]["seed"])
    pool = [r for r in rows if r.id not in held]
    assert len(pool) == len(kind)
    feats = open_cache(DataConfig(), features).features([r.audio for r in pool])[1]
    cands = [r.candidates for r in pool]
    scores = model_scores(model, feats, cands)
    classes = candidate_classes(cands, vocab)
    top = rank(softmax(scores["logits"]), scores, classes, ranking_of(model.extra))["top"]
    cand = np.flatnonzero(kind == 1)  # CANDIDATE
    assert len(cand) > 0
    assert all(tgt[i].argmax() == classes[i, top[i]] for i in cand)


def test_distill_ctc_starts_keep_the_start_that_ranks_best(runs, tmp_path):
    """``--set ctc_starts=2`` (and the default other-tokens start): three CTC phases from the last round,
    two with characters (seeds s and s + 1000) and one with phonemes; the one whose ranking is best on
    the validation rows is kept, refitted with its own tokens, and every start counts in the run's time."""
    root, manifest, test_manifest, _ = runs
    args = ["distill", str(manifest), "--teacher", str(root / "ft"), "--out", str(tmp_path / "di"),
            "--config", str(root / "di.yaml"), "--epochs", "1", "--rounds", "1", "--set", "ctc_starts=2",
            "--set", "ctc_refits=1", "--set", "ctc_refit_epochs=1", "--set", "ctc_starts_below=1",
            "--ranking-manifest", str(test_manifest)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "di"
    m = json.loads((run / "metrics.json").read_text())
    starts = m["ctc_starts"]
    assert [s["dir"] for s in starts] == ["ctc", "ctc-start2", "ctc-start3"]
    assert [s["tokens"] for s in starts] == ["char", "char", "phoneme"]
    cfgs = [yaml.safe_load((run / s["dir"] / "config.yaml").read_text()) for s in starts]
    seed = cfgs[0]["trainer"]["seed"]
    assert [c["trainer"]["seed"] for c in cfgs] == [s["seed"] for s in starts] == [seed, seed + 1000, seed]
    for s, c in zip(starts, cfgs, strict=True):
        assert c["teacher"] == str(run / "round1")  # every start distils the last round
        assert c["ctc"]["tokens"] == s["tokens"]
        assert (
            s["validation_accuracy"]
            == json.loads((run / s["dir"] / "metrics.json").read_text())["ranking"]["accuracy"]
        )
    heads = [load_model(run / s["dir"])[0] for s in starts]
    assert heads[2].tokenizer.kind == "phoneme" and heads[0].tokenizer.kind == "char"
    a, b = (h.ctc_head.state_dict() for h in heads[:2])
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different random starts
    best = max(range(3), key=lambda i: (starts[i]["validation_accuracy"], -i))
    assert m["ctc_phase"]["dir"] == starts[best]["dir"] and m["ctc_phase"]["tokens"] == starts[best]["tokens"]
    refit_cfg = yaml.safe_load((run / "ctc2" / "config.yaml").read_text())
    assert (
        refit_cfg["teacher"] == str(run / starts[best]["dir"])
        and refit_cfg["ctc"]["tokens"] == starts[best]["tokens"]
    )
    assert load_model(run)[0].tokenizer.kind == starts[best]["tokens"]
    assert m["total_seconds"] == pytest.approx(
        m["rounds"][0]["total_seconds"]
        + sum(s["total_seconds"] for s in starts)
        + m["ctc_refits"][0]["total_seconds"]
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["ctc_starts"] == 2 and saved["ctc_other_tokens"] is True
    # resumed: every step is reused and the same start is kept
    res = CliRunner().invoke(app, [*args, "--resume", "auto"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())["ctc_phase"]["dir"] == starts[best]["dir"]


def test_best_start_takes_the_first_on_ties_and_without_validation_rows():
    from plcli.distill.execute import _best_start

    assert _best_start([{"validation_accuracy": 0.5}, {"validation_accuracy": 0.7}]) == 1
    assert _best_start([{"validation_accuracy": 0.7}, {"validation_accuracy": 0.7}]) == 0
    assert _best_start([{"validation_accuracy": None}, {"validation_accuracy": 0.7}]) == 0


def test_extra_ctc_starts_only_where_the_classifier_leaves_room_and_rows_can_choose():
    from plcli.distill import DistillConfig
    from plcli.distill.execute import _wanted_starts

    def first(alone, rows=50):
        return {"ranking": {"rows": rows, "accuracy": 0.9,
                            "grid": [{"ctc_weight": 0.0, "length_norm": True, "accuracy": alone},
                                     {"ctc_weight": 8.0, "length_norm": True, "accuracy": 0.9}]}}

    cfg = DistillConfig.from_dict({"data": {"manifests": ["x.jsonl"]}, "teacher": "t", "ctc_starts": 3})
    said = []
    assert _wanted_starts(cfg, first(0.6), said.append) == 4  # 3 + the other tokens' start
    assert _wanted_starts(cfg, first(0.9), said.append) == 1 and "above ctc_starts_below" in said[-1]
    assert _wanted_starts(cfg, first(0.6, rows=0), said.append) == 1 and "no validation rows" in said[-1]
    cfg.ctc_starts_below = 1.0
    assert _wanted_starts(cfg, first(0.9), said.append) == 4
    cfg.ctc_other_tokens = False
    assert _wanted_starts(cfg, first(0.9), said.append) == 3
    cfg.ctc_starts = 1
    assert _wanted_starts(cfg, first(0.6), said.append) == 1


def test_start_plan_gives_each_start_its_tokens_and_seed():
    from plcli.distill import DistillConfig
    from plcli.distill.plan import start_plan

    cfg = DistillConfig.from_dict({"data": {"manifests": ["x.jsonl"]}, "teacher": "t",
                                   "trainer": {"seed": 5}})
    assert start_plan(cfg) == [("char", 5), ("char", 1005), ("phoneme", 5)]
    cfg.ctc.tokens = "phoneme"
    cfg.ctc_starts = 1
    assert start_plan(cfg) == [("phoneme", 5), ("char", 5)]
    cfg.ctc_other_tokens = False
    assert start_plan(cfg) == [("phoneme", 5)]


def test_a_resumed_ctc_step_is_reused_only_with_its_tokens_and_start(tmp_path):
    from plcli.distill.execute import _reusable
    from plcli.distill.plan import CTCStart, Refit, Round

    def as_step(kind, tokens):
        common = dict(folder="ctc2", epochs=1, tokens=tokens, vote=False, number=1)
        return {
            "refit": lambda: Refit(**common),
            "start": lambda: CTCStart(**common, seed=0),
            "round": lambda: Round(**common, warm=False),
        }[kind]()

    step = tmp_path / "run" / "ctc2"
    step.mkdir(parents=True)
    assert not _reusable(step, tmp_path / "run" / "ctc", as_step("refit", "char"))  # not finished
    for name in ("metrics.json", "model.pt"):
        (step / name).write_text("{}")
    (step / "config.yaml").write_text(
        yaml.safe_dump(
            {"stage": "distill", "teacher": str(tmp_path / "run" / "ctc"), "ctc": {"tokens": "char"}}
        )
    )
    assert _reusable(step, tmp_path / "run" / "ctc", as_step("refit", "char"))
    assert not _reusable(step, tmp_path / "run" / "ctc-start2", as_step("refit", "char"))
    assert not _reusable(step, tmp_path / "run" / "ctc", as_step("refit", "phoneme"))
    assert _reusable(
        step, tmp_path / "elsewhere", as_step("start", "char")
    )  # a start: finished, with the same tokens
    assert not _reusable(step, tmp_path / "elsewhere", as_step("start", "phoneme"))
    assert _reusable(step, tmp_path / "elsewhere", as_step("round", "phoneme"))  # a round: finished is enough
