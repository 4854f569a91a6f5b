"""plcli.ranking (the combined candidate ranking) and the CTC helpers the stages use, on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plcli import ranking
from plcli.data.labels import LabelNormalizer, Vocabulary
from plcli.models.ctc import class_candidates, class_ctc_loss, encoder_frames, encoder_pass, text_targets
from plcli.models.encoders import build_encoder
from plcli.text import build_tokenizer


def test_candidate_classes_marks_unknown_and_padding():
    vocab = Vocabulary.build(["ok", "see you", "on my way"])
    c = ranking.candidate_classes([["OK!", "new text"], ["on my way"], []], vocab)
    assert c.shape == (3, 2)
    assert c[0, 0] == vocab.index("ok") and c[0, 1] == ranking.UNKNOWN
    assert c[1, 0] == vocab.index("on my way") and c[1, 1] == ranking.PAD
    assert (c[2] == ranking.PAD).all()


def test_closed_set_scores_give_unknown_candidates_the_left_over_mass():
    probs = np.array([[0.5, 0.3, 0.2]])
    classes = np.array([[0, ranking.UNKNOWN, ranking.UNKNOWN, ranking.PAD]])
    s = ranking.closed_set_scores(probs, classes)
    assert s[0, 0] == pytest.approx(math.log(0.5))
    assert s[0, 1] == pytest.approx(math.log(0.25)) and s[0, 2] == pytest.approx(math.log(0.25))
    assert s[0, 3] == -np.inf
    # every known candidate: unknowns would get (almost) nothing, and there are none
    s = ranking.closed_set_scores(probs, np.array([[0, 1, 2]]))
    assert np.allclose(np.exp(s), probs)


def test_ctc_scores_length_norm_and_infeasible():
    nll = np.array([[10.0, 6.0, np.inf, np.inf]])
    lengths = np.array([[10, 3, 4, 0]])
    valid = np.array([[True, True, True, False]])
    raw = ranking.ctc_scores(nll, lengths, valid, length_norm=False)
    assert raw[0, 0] == -10.0 and raw[0, 1] == -6.0
    assert raw[0, 2] == -10.0 - ranking.INFEASIBLE_MARGIN and raw[0, 3] == -np.inf
    per_token = ranking.ctc_scores(nll, lengths, valid, length_norm=True)
    assert per_token[0, 0] == -1.0 and per_token[0, 1] == -2.0
    assert per_token[0, 0] > per_token[0, 1]  # the long text wins once its length is accounted for
    assert raw[0, 1] > raw[0, 0]


def test_combine_weights_and_decided_by():
    cls = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    ctc = np.array([[-3.0, -1.0, -2.0], [-1.0, -5.0, -5.0]])
    assert (ranking.combine(cls, ctc, 0.0).argmax(1) == [0, 0]).all()
    assert (ranking.combine(cls, ctc, 1000.0).argmax(1) == [1, 0]).all()
    comb = ranking.combine(cls, ctc, 1.0)
    assert np.allclose(comb, cls + ctc)
    assert ranking.decided_by(cls, ctc, ranking.combine(cls, ctc, 1000.0)) == ["ctc", "both"]
    assert ranking.decided_by(cls, ctc, ranking.combine(cls, ctc, 0.0)) == ["classifier", "both"]
    assert ranking.decided_by(cls, None, cls) == ["classifier", "classifier"]
    p = ranking.softmax_rows(np.array([[0.0, -np.inf, np.log(3.0)]]))
    assert np.allclose(p, [[0.25, 0.0, 0.75]])


def test_choose_ranking_picks_the_best_setting_on_validation_rows():
    rng = np.random.default_rng(0)
    n, k = 200, 5
    truth = rng.integers(0, k, n)
    # the classifier is right on 40 % of the rows, the CTC scores on 80 %: a large weight must win
    cls = np.log(rng.dirichlet(np.ones(k), n))
    right = rng.random(n) < 0.4
    cls[right, truth[right]] = 0.0
    ctc = -rng.random((n, k)) * 3
    good = rng.random(n) < 0.8
    ctc[good, truth[good]] = 0.5
    out = ranking.choose_ranking(cls, {True: ctc, False: ctc * 2}, truth)
    assert out["ctc_weight"] >= 4 and out["rows"] == n
    best = max(g["accuracy"] for g in out["grid"])
    assert out["accuracy"] == best
    zero = [g for g in out["grid"] if g["ctc_weight"] == 0][0]["accuracy"]
    assert best > zero
    assert ranking.choose_ranking(cls, {True: ctc}, np.full(n, -1))["rows"] == 0


def _open_case(n_new: int, seed: int = 0):
    """Closed rows (3 known candidates) where the classifier is right and the CTC head wrong, and
    ``n_new`` open rows whose truth is an unknown text that only the CTC score finds."""
    rng = np.random.default_rng(seed)
    n = 40 + n_new
    classes = np.tile(np.array([0, 1, 2]), (n, 1))
    classes[40:, 2] = ranking.UNKNOWN
    truth = np.zeros(n, dtype=np.int64)
    truth[40:] = 2
    cls = np.log(np.tile([0.8, 0.15, 0.05], (n, 1)))
    cls[40:] = np.log([0.6, 0.39, 0.01])
    ctc = np.tile([-5.0, -1.0, -3.0], (n, 1)) + rng.normal(0, 0.01, (n, 3))
    ctc[40:] = [-3.0, -3.0, -0.5]
    return cls, ctc, truth, classes


def test_open_rows_get_weights_of_their_own():
    """Closed rows want no CTC weight; the open rows' weight is never chosen on them: it is the
    default until there are MIN_NEW_ROWS rows saying a new message, then chosen there."""
    cls, ctc, truth, classes = _open_case(ranking.MIN_NEW_ROWS - 1)
    out = ranking.choose_ranking(cls, {True: ctc}, truth, classes=classes)
    assert out["ctc_weight"] == 0.0 and out["accuracy"] == 1.0
    assert "ctc_weight" not in out["open"] and out["open"]["chosen_on"].startswith("default")  # not stored
    assert ranking.ranking_of({"ranking": out})["open"]["ctc_weight"] == ranking.OPEN_DEFAULT["ctc_weight"]
    cls, ctc, truth, classes = _open_case(ranking.MIN_NEW_ROWS)
    out = ranking.choose_ranking(cls, {True: ctc}, truth, classes=classes)
    assert out["ctc_weight"] == 0.0 and out["open"]["rows"] == ranking.MIN_NEW_ROWS
    assert out["open"]["ctc_weight"] > 0 and out["open"]["accuracy"] == 1.0
    # rank applies each set of weights to its own rows: every row right
    both = ranking.ranked_scores(cls, ctc, out, None, ranking.open_rows(classes))
    assert (both.argmax(1) == truth).all()
    one = ranking.ranked_scores(cls, ctc, {**out, "open": None}, None, ranking.open_rows(classes))
    assert (one.argmax(1) == truth)[40:].sum() == 0  # the closed rows' weight alone never names the new text
    assert ranking.ranking_of({"ranking": {"ctc_weight": 0.0}})["open"] == ranking.OPEN_DEFAULT


def test_open_default_leaves_a_new_text_the_closed_set_heads_leftover_mass():
    """A CTC head that prefers the familiar text does not decide open rows by default: the known
    candidate the classifier rejects loses to the new text, whatever the CTC score says."""
    classes = np.array([[0, ranking.UNKNOWN]])
    cls = ranking.closed_set_scores(np.array([[0.1, 0.9]]), classes)  # class 1 is no candidate
    ctc = np.array([[-1.0, -5.0]])  # the heard text scores far better
    setting = ranking.ranking_of(None)
    assert ranking.ranked_scores(cls, ctc, setting, None, ranking.open_rows(classes)).argmax(1)[0] == 1
    assert (
        ranking.ranked_scores(
            cls,
            ctc,
            {**setting, "open": {"ctc_weight": 1.0, "prior_weight": 0.0}},
            None,
            ranking.open_rows(classes),
        ).argmax(1)[0]
        == 0
    )


@pytest.mark.parametrize("true_t", [0.1, 3.0, 300.0])
def test_fit_temperature_recovers_the_temperature_of_calibrated_scores(true_t):
    rng = np.random.default_rng(1)
    n, k = 4000, 10
    scores = rng.normal(0, 2, (n, k)) * true_t  # softmax(scores / true_t) is the truth's distribution
    scores[:, -1] = -np.inf  # padding: a row with nine candidates
    p = ranking.softmax_rows(scores / true_t)
    truth = np.array([rng.choice(k, p=row) for row in p])
    t = ranking.fit_temperature(scores, truth)
    assert abs(np.log(t / true_t)) < np.log(1.3)
    assert ranking.fit_temperature(scores, np.full(n, -1)) == 1.0  # no rows: unchanged
    # choose_ranking fits it to the setting it chose
    zeros = np.zeros((n, k))
    out = ranking.choose_ranking(zeros, {True: scores}, truth, lambdas=(1.0,))
    assert out["temperature"] == t


def test_rank_probabilities_follow_the_stored_temperature():
    probs = np.array([[0.5, 0.3, 0.2]])
    classes = np.array([[0, 1, 2]])
    hot = ranking.rank(probs, {}, classes, {**ranking.DEFAULT, "temperature": 0.01})
    cold = ranking.rank(probs, {}, classes, {**ranking.DEFAULT, "temperature": 100.0})
    plain = ranking.rank(probs, {}, classes, ranking.DEFAULT)
    assert np.allclose(plain["probs"], probs)  # temperature 1: the classifier's own posterior
    assert hot["probs"][0, 0] > 0.99 and np.allclose(cold["probs"], 1 / 3, atol=0.01)
    assert (hot["top"] == cold["top"]).all() and (hot["combined"] == cold["combined"]).all()
    assert ranking.ranking_of({"ranking": {"temperature": 7.0}})["temperature"] == 7.0
    assert ranking.ranking_of(None)["temperature"] == 1.0  # models saved before the temperature


def test_prior_correction_of_the_ctc_score():
    classes = np.array([[0, 1, -1], [2, -2, -2]])  # a text outside the vocabulary; padding
    fam = ranking.familiarity(classes, [0, 9, 99])
    assert np.allclose(fam, [[0.0, np.log(10), 0.0], [np.log(100), 0.0, 0.0]])
    # the CTC head prefers the heard text (class 1) a little; the truth is the new one (position 2)
    rng = np.random.default_rng(0)
    n = 300
    cls = np.log(np.full((n, 3), 1 / 3))
    ctc = rng.normal(0, 0.05, (n, 3))
    ctc[:, 1] += 0.1
    truth = np.full(n, 2)
    classes = np.tile([0, 1, -1], (n, 1))
    fam = ranking.familiarity(classes, [0, 9, 0])
    plain = ranking.choose_ranking(cls, {True: ctc}, truth)
    out = ranking.choose_ranking(cls, {True: ctc}, truth, fam=fam)
    assert (
        plain["prior_weight"] == 0.0 and out["prior_weight"] > 0 and out["accuracy"] > plain["accuracy"] + 0.3
    )
    assert {g["prior_weight"] for g in out["grid"]} == set(ranking.PRIOR_WEIGHTS)
    # rank() applies it with the vocabulary's counts, and reports the CTC head's own score
    scores = {"nll": -ctc * 5, "lengths": np.full((n, 3), 5), "valid": np.ones((n, 3), bool)}
    setting = {**ranking.DEFAULT, "ctc_weight": 1000.0, "prior_weight": out["prior_weight"]}
    probs = np.full((n, 2), 0.5)
    with_counts = ranking.rank(probs, scores, classes, setting, counts=[0, 9])
    without = ranking.rank(probs, scores, classes, setting)
    assert (with_counts["top"] == 2).mean() > (without["top"] == 2).mean() + 0.3
    assert np.allclose(with_counts["ctc"], without["ctc"])
    # ties keep no correction: nothing to gain on rows the head already gets right
    ctc_right = ctc.copy()
    ctc_right[:, 2] += 1.0
    assert ranking.choose_ranking(cls, {True: ctc_right}, truth, fam=fam)["prior_weight"] == 0.0


def test_truth_positions_by_normalised_key():
    norm = LabelNormalizer()
    pos = ranking.truth_positions([["A", "See you!"], ["x"], ["y"]], ["see you", "z", None], norm)
    assert pos.tolist() == [1, -1, -1]


def test_new_message_rows_counts_truths_outside_the_vocabulary():
    vocab = Vocabulary.build(["ok", "see you", "on my way"])
    norm = LabelNormalizer()
    cands = [["ok", "new text"], ["OK", "another new one"], ["on my way"], ["x", "see you"], []]
    truths = ["new text", "ok", "on my way", "not a candidate", None]
    classes = ranking.candidate_classes(cands, vocab)
    pos = ranking.truth_positions(cands, truths, norm)
    # row 0 only: rows 3 and 4 have no truth among their candidates
    assert ranking.new_message_rows(classes, pos) == 1
    truths[1] = "another new one"
    assert ranking.new_message_rows(classes, ranking.truth_positions(cands, truths, norm)) == 2


def test_class_candidates_and_text_targets():
    mask = torch.tensor([[True, False, True, False], [False, True, False, False], [True, True, True, True]])
    y = torch.tensor([-1, -1, 3])
    idx, valid = class_candidates(mask, y)
    assert idx.shape == (3, 2)  # the largest set once the exact row is its label alone
    assert set(idx[0][valid[0]].tolist()) == {0, 2}
    assert idx[1][valid[1]].tolist() == [1]
    assert idx[2][valid[2]].tolist() == [3]  # the exact label replaces the candidate set
    tok = build_tokenizer("char", ["ab", "b"])
    t, ln = text_targets(tok, ["ab", "b", "!!"])
    assert ln.tolist() == [2, 1, 0] and t.shape == (3, 2)


def _reference_class_ctc(lp, idx, valid, tokens, lengths, weights=None, log_prior=None):
    """One row at a time: an explicit sum over the candidates of F.ctc_loss."""
    T, B = lp.shape[:2]
    out = []
    for b in range(B):
        terms, ws, lens = [], [], []
        for k in range(idx.shape[1]):
            c = int(idx[b, k])
            if not valid[b, k] or lengths[c] == 0:
                continue
            nll = F.ctc_loss(
                lp[:, b : b + 1],
                tokens[c : c + 1, : lengths[c]],
                torch.tensor([T]),
                lengths[c : c + 1],
                reduction="sum",
            )
            terms.append(nll)
            ws.append(None if weights is None else weights[b, k])
            lens.append(float(lengths[c]))
        if weights is not None:
            row = sum(w * t for w, t in zip(ws, terms, strict=True))
        else:
            inside = torch.stack(
                [
                    -t - (log_prior[int(idx[b, k])] if log_prior is not None else 0.0)
                    for t, k in zip(terms, [k for k in range(idx.shape[1]) if valid[b, k]], strict=True)
                ]
            )
            row = -torch.logsumexp(inside, 0)
        out.append(row / (sum(lens) / len(lens)))
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["set", "prior", "weights"])
def test_class_ctc_loss_matches_a_per_candidate_reference(mode):
    torch.manual_seed(0)
    tok = build_tokenizer("char", ["abc", "ba", "cab", "a"])
    tokens, lengths = text_targets(tok, ["abc", "ba", "cab", "a"])
    T, B = 12, 3
    lp = torch.randn(T, B, tok.size, dtype=torch.float64).log_softmax(-1).requires_grad_()
    mask = torch.tensor([[True, True, False, True], [False, True, True, False], [True, False, False, False]])
    idx, valid = class_candidates(mask)
    weights = log_prior = None
    if mode == "weights":
        weights = torch.rand(B, idx.shape[1], dtype=torch.float64) * valid
        weights = weights / weights.sum(1, keepdim=True)
    if mode == "prior":
        log_prior = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    got = class_ctc_loss(lp, idx, valid, tokens, lengths, weights=weights, log_prior=log_prior)
    ref = _reference_class_ctc(lp, idx, valid, tokens, lengths, weights=weights, log_prior=log_prior)
    assert torch.allclose(got, ref, atol=1e-8)
    (g1,) = torch.autograd.grad(got.sum(), lp)
    (g2,) = torch.autograd.grad(ref.sum(), lp)
    assert torch.allclose(g1, g2, atol=1e-8)


def test_encoder_pass_equals_the_encoder_and_its_frames():
    enc = build_encoder("tcresnet-small", 16).eval()
    x = torch.randn(2, 16, 51)
    for tap in (0, 1, 2):
        emb, frames = encoder_pass(enc, x, tap)
        assert torch.allclose(emb, enc(x), atol=1e-6)
        assert torch.allclose(frames, encoder_frames(enc, x, tap), atol=1e-6)
