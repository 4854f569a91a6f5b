"""Pretrain's representation probes: candidate-restricted kNN disambiguation (against a loop
reference), chance and prior levels, and the figures in a real run's metrics.json."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from plcli.cli import app
from plcli.metrics import candidate_chance
from plcli.pretrain import (
    candidate_knn_predictions,
    candidate_prior_predictions,
    knn_chance,
    probe_metrics,
    unique_rows,
)
from tests.conftest import write_truth
from tests.test_pretrain import tiny_config


def reference_predictions(emb, mask, y, k) -> list[int]:
    """The probe spelled out: one row, one neighbour, one vote at a time."""
    n, c = mask.shape
    voters = [j for j in range(n) if y[j] >= 0 or mask[j].any()]
    ballots = {j: [int(y[j])] if y[j] >= 0 else [cl for cl in range(c) if mask[j, cl]] for j in voters}
    counts = Counter(cl for j in voters for cl in ballots[j])
    preds = []
    for i in range(n):
        cands = [cl for cl in range(c) if mask[i, cl]]
        if not cands:
            preds.append(-1)
            continue
        sims = sorted(((float(emb[i] @ emb[j]), j) for j in voters if j != i), key=lambda t: -t[0])
        votes = dict.fromkeys(cands, 0.0)
        for s, j in sims[:k]:
            for cl in ballots[j]:
                if cl in votes:
                    votes[cl] += max(s + 1.0, 0.0)
        prior = {cl: counts[cl] - (cl in ballots.get(i, ())) for cl in cands}  # the other rows' ballots
        preds.append(max(cands, key=lambda cl: (votes[cl], prior[cl])))  # the first of equal maxima
    return preds


def random_problem(seed: int, n: int = 25, c: int = 7, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    mask = torch.rand(n, c, generator=g) < 0.35
    mask[:3] = False  # rows without candidates: never predicted; row 0 is exact, so it still votes
    y = torch.full((n,), -1)
    for i in (0, 4, 7, 11):
        y[i] = int(torch.randint(0, c, (1,), generator=g))
    return emb, mask, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k,chunk", [(1, 2048), (3, 4), (5, 1), (40, 7)])
def test_candidate_knn_matches_loop_reference(seed, k, chunk):
    emb, mask, y = random_problem(seed)
    pred = candidate_knn_predictions(emb, mask, y, k, chunk=chunk)
    assert pred.tolist() == reference_predictions(emb, mask, y, k)
    has = mask.any(1)
    assert (pred[~has] == -1).all() and mask[has.nonzero().flatten(), pred[has]].all()


def test_candidate_knn_ties_go_to_the_prior_not_the_class_order():
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0], [0.0, -1.0]]), dim=1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    y = torch.full((4,), -1)
    # row 0's one neighbour (row 1) votes for both its candidates; the other rows' ballots favour 1
    assert candidate_knn_predictions(emb, mask, y, k=1)[0] == 1
    y[1] = 0  # an exact neighbour votes for its label only: no tie
    assert candidate_knn_predictions(emb, mask, y, k=1)[0] == 0


def test_candidate_knn_is_well_above_chance_on_clustered_embeddings():
    g = torch.Generator().manual_seed(0)
    n, c, size = 120, 12, 4
    truth = torch.arange(n) % c
    centres = F.normalize(torch.randn(c, 16, generator=g), dim=1)
    emb = F.normalize(centres[truth] + 0.1 * torch.randn(n, 16, generator=g), dim=1)
    mask = torch.zeros(n, c, dtype=torch.bool)
    for i in range(n):
        others = [j for j in torch.randperm(c, generator=g).tolist() if j != truth[i]]
        mask[i, [int(truth[i]), *others[: size - 1]]] = True
    y = torch.full((n,), -1)  # no exact labels at all
    m = probe_metrics(emb, y, mask, truth, k=5)
    assert m["probe/cand_knn_chance"] == pytest.approx(1 / size)
    assert m["probe/cand_knn_acc"] > 0.9
    assert m["probe/cand_knn_prior"] < 0.5  # balanced classes: frequencies alone say little
    assert "probe/knn_acc" not in m and "probe/cand_knn_exact_acc" not in m
    # shuffled embeddings carry no signal: back near chance
    shuffled = probe_metrics(emb[torch.randperm(n, generator=g)], y, mask, truth, k=5)
    assert shuffled["probe/cand_knn_acc"] < 0.5


def test_chance_levels():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    assert candidate_chance(mask) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert candidate_chance(torch.from_numpy(mask)) == pytest.approx(0.375)
    assert math.isnan(candidate_chance(mask[2:]))
    assert knn_chance(torch.tensor([0, 0, 1, -1, 2, 0])) == pytest.approx(3 / 5)
    assert math.isnan(knn_chance(torch.tensor([-1, -1])))


def test_probe_metrics_exact_rows_and_their_chance():
    emb, mask, y = random_problem(0)
    m = probe_metrics(emb, y, mask, torch.full_like(y, -1), k=3)
    exact = y >= 0
    assert m["probe/knn_chance"] == pytest.approx(knn_chance(y[exact])) and 0 <= m["probe/knn_acc"] <= 1
    cand_exact = exact & mask.any(1)  # row 0 is exact without candidates: not scored
    pred = candidate_knn_predictions(emb, mask, y, 3)
    assert m["probe/cand_knn_exact_acc"] == pytest.approx((pred == y)[cand_exact].float().mean().item())
    assert m["probe/cand_knn_exact_chance"] == pytest.approx(candidate_chance(mask[cand_exact]))
    assert "probe/cand_knn_acc" not in m  # no truth


def test_prior_predictions_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    y = torch.tensor([-1, -1, -1, 2, -1])  # the exact row votes for its label only
    # votes of all rows: class 0: 3, class 1: 2, class 2: 2; each row leaves its own ballot out
    assert candidate_prior_predictions(mask, y).tolist() == [0, 0, 0, 2, -1]


def test_probe_argument_checks():
    emb, mask, y = random_problem(0)
    with pytest.raises(ValueError, match="bool"):
        candidate_knn_predictions(emb, mask.int(), y, 3)
    with pytest.raises(ValueError, match="rows"):
        candidate_knn_predictions(emb[:-1], mask, y, 3)
    with pytest.raises(ValueError, match="k and chunk"):
        candidate_knn_predictions(emb, mask, y, 0)
    with pytest.raises(ValueError, match="outside"):
        candidate_prior_predictions(mask, torch.full_like(y, 99))


def test_unique_rows_drops_the_distributed_samplers_padding():
    gathered = torch.tensor([0, 2, 4, 1, 3, 0])  # 5 rows on 2 ranks: rank 1 repeats row 0
    keep = unique_rows(gathered)
    assert gathered[keep].tolist() == [0, 1, 2, 3, 4] and keep[0] == 0


def test_pretrain_run_reports_candidate_probe_with_truth(tmp_path, tiny_data):
    manifest, truth = tiny_data
    truth_file = write_truth(tmp_path / "truth.jsonl", truth)
    out = tmp_path / "pre"
    res = CliRunner().invoke(app, ["pretrain", str(manifest), "--out", str(out), "--config",
                                   tiny_config(tmp_path), "--epochs", "1", "--truth", str(truth_file)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["probe_cand_knn_acc"] <= 1.0 and len(m["probe_cand_knn_acc_history"]) == 1
    assert m["probe_cand_knn_chance"] == pytest.approx(1 / 3)  # the fixture's sets have 3 candidates
    assert m["probe_cand_knn_rows"] == 34  # 36 clips, the last 2 without candidates
    assert 0.0 <= m["probe_cand_knn_prior"] <= 1.0 and 0.0 <= m["probe_cand_knn_exact_acc"] <= 1.0
    assert 0.0 <= m["probe_knn_acc"] <= 1.0 and m["probe_knn_chance"] >= m["probe_chance"]


def test_pretrain_missing_truth_file_leaves_no_run(tmp_path, tiny_data):
    manifest, _ = tiny_data
    out = tmp_path / "pre"
    res = CliRunner().invoke(app, ["pretrain", str(manifest), "--out", str(out), "--config",
                                   tiny_config(tmp_path), "--truth", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "truth file not found" in res.output
    assert not out.exists()
