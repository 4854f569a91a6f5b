"""CandidateCTCLoss against an explicit sum over the candidates of F.ctc_loss (values, gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plcli.losses import CandidateCTCLoss, candidate_ctc_nll, ctc_feasible, scaled_ctc_nll


def _batch(seed=0, T=12, B=4, K=3, L=5, V=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, B, V, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, V, (B, K, L), generator=g)
    lengths = torch.randint(1, L + 1, (B, K), generator=g)
    mask = torch.ones(B, K, dtype=torch.bool)
    if K == 3:
        mask[1, 2] = False  # a row with two candidates
        mask[2, 1:] = False  # an exact row
    inputs = torch.full((B,), T, dtype=torch.long)
    inputs[3] = T - 3
    return logits, inputs, targets, lengths, mask


def _reference(logits, inputs, targets, lengths, mask, log_prior=None, weights=None):
    """Slow and obvious: one F.ctc_loss per (row, candidate), then -log sum_k exp(-nll_k) / q_k."""
    lp = logits.log_softmax(-1)
    rows = []
    for b in range(lp.shape[1]):
        terms = []
        for k in range(targets.shape[1]):
            if not mask[b, k]:
                continue
            tgt = targets[b, k, : lengths[b, k]].unsqueeze(0)
            nll = F.ctc_loss(lp[: inputs[b], b : b + 1], tgt, inputs[b : b + 1], lengths[b, k : k + 1],
                             blank=0, reduction="sum", zero_infinity=False)
            if not math.isfinite(nll.item()):
                continue
            if weights is not None:
                terms.append(weights[b, k] * nll)
            else:
                q = 0.0 if log_prior is None else log_prior[b, k]
                terms.append(-nll - q)
        if not terms:
            rows.append(lp.sum() * 0)
        elif weights is not None:
            rows.append(torch.stack(terms).sum())
        else:
            rows.append(-torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["plain", "prior", "weights"])
def test_matches_explicit_sum_of_ctc_losses(seed, variant):
    logits, inputs, targets, lengths, mask = _batch(seed)
    kw = {}
    if variant == "prior":
        kw["log_prior"] = torch.log(torch.rand(mask.shape, dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(9)))
    if variant == "weights":
        w = torch.rand(mask.shape, dtype=torch.float64) * mask
        kw["weights"] = w / w.sum(1, keepdim=True)
    got = CandidateCTCLoss(reduction="none")(logits.log_softmax(-1), inputs, targets, lengths, mask, **kw)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    want = _reference(logits, inputs, targets, lengths, mask, **kw)
    (g_want,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


def test_single_candidate_is_plain_ctc():
    logits, inputs, targets, lengths, _ = _batch(3, K=1)
    mask = torch.ones(targets.shape[:2], dtype=torch.bool)
    got = CandidateCTCLoss(reduction="sum")(logits.log_softmax(-1), inputs, targets, lengths, mask)
    want = F.ctc_loss(logits.log_softmax(-1), targets[:, 0], inputs, lengths[:, 0], reduction="sum")
    torch.testing.assert_close(got, want)


def test_set_loss_is_below_each_member():
    logits, inputs, targets, lengths, mask = _batch(4)
    lp = logits.log_softmax(-1)
    nll = candidate_ctc_nll(lp, inputs, targets, lengths, mask)
    per_row = CandidateCTCLoss(reduction="none")(lp, inputs, targets, lengths, mask)
    finite = torch.isfinite(nll)
    assert finite.any(dim=1).all()
    # -log sum_k p_k <= -log p_j for every member j
    assert bool((per_row.unsqueeze(1) <= nll.masked_fill(~finite, math.inf) + 1e-9).all())


def test_infeasible_and_missing_candidates_drop_out():
    T, V = 4, 5
    lp = torch.randn(T, 1, V, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[[1, 1, 1, 0], [2, 3, 0, 0]]])  # "aaa" needs 5 frames; "bc" needs 2
    lengths = torch.tensor([[3, 2]])
    assert ctc_feasible(torch.tensor([T]), targets, lengths).tolist() == [[False, True]]
    mask = torch.tensor([[True, True]])
    got = CandidateCTCLoss()(lp, torch.tensor([T]), targets, lengths, mask)
    want = F.ctc_loss(lp, targets[:, 1, :2], torch.tensor([T]), torch.tensor([2]))
    torch.testing.assert_close(got, want * 2)  # ctc_loss's mean divides by the target length
    # nothing feasible: loss 0 with a finite (zero) gradient
    x = lp.clone().requires_grad_(True)
    z = CandidateCTCLoss()(x, torch.tensor([T]), targets, lengths, torch.tensor([[True, False]]))
    z.backward()
    assert z.item() == 0.0 and torch.isfinite(x.grad).all()


def test_argument_checks():
    logits, inputs, targets, lengths, mask = _batch(0)
    lp = logits.log_softmax(-1)
    loss = CandidateCTCLoss()
    with pytest.raises(ValueError, match="reduction"):
        CandidateCTCLoss(reduction="avg")
    with pytest.raises(ValueError, match="blank"):
        CandidateCTCLoss(blank=-1)
    with pytest.raises(ValueError, match="log_probs"):
        loss(lp[0], inputs, targets, lengths, mask)
    with pytest.raises(ValueError, match="mask"):
        loss(lp, inputs, targets, lengths, mask.long())
    with pytest.raises(ValueError, match="input_lengths"):
        loss(lp, inputs + 100, targets, lengths, mask)
    with pytest.raises(ValueError, match="blank token"):
        bad = targets.clone()
        bad[0, 0, 0] = 0
        loss(lp, inputs, bad, lengths, mask)
    with pytest.raises(ValueError, match="weights"):
        loss(lp, inputs, targets, lengths, mask, weights=-torch.ones(mask.shape, dtype=torch.float64))
    with pytest.raises(ValueError, match="not both"):
        loss(lp, inputs, targets, lengths, mask, log_prior=torch.zeros(mask.shape),
             weights=torch.zeros(mask.shape))


def _one_by_one(lp, rows, targets, lengths):
    """Slow and obvious: one F.ctc_loss call per pair, over all frames."""
    T = lp.shape[0]
    return torch.stack([
        F.ctc_loss(lp[:, r : r + 1], targets[n : n + 1, : lengths[n]], torch.tensor([T]), lengths[n : n + 1],
                   blank=0, reduction="sum", zero_infinity=False)
        for n, r in enumerate(rows.tolist())
    ])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_scaled_forward_matches_ctc_loss(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    T, B, V, N, L = 30, 3, 5, 12, 6
    lp = torch.randn(T, B, V, generator=g, dtype=dtype).mul(3).log_softmax(-1)
    rows = torch.randint(0, B, (N,), generator=g)
    targets = torch.randint(1, V, (N, L), generator=g)
    targets[0, :3] = 2  # repeated labels: the skip over the blank between them is not allowed
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[1] = 1
    got = scaled_ctc_nll(lp, rows, targets, lengths)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.to(dtype), _one_by_one(lp, rows, targets, lengths))


def test_scoring_path_matches_the_training_path():
    """Without gradients candidate_ctc_nll takes the scaled forward pass; with them F.ctc_loss."""
    logits, _, targets, lengths, mask = _batch(3)
    inputs = torch.full((logits.shape[1],), logits.shape[0], dtype=torch.long)
    lp = logits.log_softmax(-1)
    want = candidate_ctc_nll(lp, inputs, targets, lengths, mask)  # requires grad: F.ctc_loss
    with torch.no_grad():
        got = candidate_ctc_nll(lp, inputs, targets, lengths, mask)
    torch.testing.assert_close(got, want.detach())
    assert (torch.isinf(got) == ~mask).all()


def test_scoring_falls_back_where_the_scaled_pass_underflows():
    T, V = 6, 4
    lp = torch.full((T, 1, V), -1e5).index_fill(2, torch.tensor([0]), 0.0)  # blank only: labels at e^-100000
    targets = torch.tensor([[[1, 2], [3, 0]]])
    lengths = torch.tensor([[2, 1]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    inputs = torch.tensor([T])
    assert not torch.isfinite(scaled_ctc_nll(lp, torch.tensor([0]), torch.tensor([[1, 2]]),
                                             torch.tensor([2]))).all()
    with torch.no_grad():
        got = candidate_ctc_nll(lp, inputs, targets, lengths, mask)
    want = _one_by_one(lp, torch.tensor([0, 0]), targets[0], lengths[0]).view(1, 2)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got, want)
