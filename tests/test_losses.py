"""Losses against slow loop-based references (values and gradients, float64), plus properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plcli.losses import (
    CandidateIndicatorMSELoss,
    CandidateLoss,
    NTXentLoss,
    ProdenLoss,
    SoftTargetCrossEntropy,
    candidate_mask,
    candidate_targets,
)

DT = torch.float64


def _randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=DT) * 2).requires_grad_()


def _mask(rows: list[str]) -> torch.Tensor:
    """``["10100", ...]`` -> (B, C) bool mask."""
    return torch.tensor([[c == "1" for c in r] for r in rows])


# mixes several candidates, one candidate (one-hot), no candidates, all candidates
MASK = _mask(["11000", "00100", "00000", "11111", "01011"])


def _assert_close_with_grads(out, ref, inputs):
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    g_out = torch.autograd.grad(out, inputs, retain_graph=True)
    g_ref = torch.autograd.grad(ref, inputs)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# -- references: python loops over rows and classes ------------------------------------------------


def _candidates(mask_row):
    idx = [j for j, m in enumerate(mask_row.tolist()) if m]
    return idx or list(range(len(mask_row)))


def ref_ntxent(z0, z1, t):
    zs = [z / torch.sqrt((z * z).sum()) for z in list(z0) + list(z1)]
    n2 = len(zs)
    losses = []
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        den = sum(torch.exp((zs[i] * zs[k]).sum() / t) for k in range(n2) if k != i)
        losses.append(-((zs[i] * zs[pos]).sum() / t - torch.log(den)))
    return sum(losses) / n2


def ref_candidate_targets(logits, mask, t=1.0):
    rows = []
    for i in range(logits.shape[0]):
        cands = _candidates(mask[i])
        total = sum(torch.exp(logits[i, j] / t) for j in cands)
        zero = logits[i, 0] * 0
        rows.append(
            torch.stack(
                [torch.exp(logits[i, j] / t) / total if j in cands else zero for j in range(logits.shape[1])]
            )
        )
    return torch.stack(rows)


def ref_softmax_row(row, t=1.0):
    total = sum(torch.exp(x / t) for x in row)
    return [torch.exp(x / t) / total for x in row]


def ref_cc(logits, mask):
    losses = []
    for i in range(logits.shape[0]):
        p = ref_softmax_row(logits[i])
        losses.append(-torch.log(sum(p[j] for j in _candidates(mask[i]))))
    return sum(losses) / len(losses)


def ref_cc_prior(logits, mask, prior):
    """-log sum_{j in S} p_j / q_j per row; a row without candidates has loss 0."""
    losses = []
    for i in range(logits.shape[0]):
        p = ref_softmax_row(logits[i])
        if not mask[i].any():
            losses.append(logits[i].sum() * 0.0)
            continue
        losses.append(-torch.log(sum(p[j] / prior[j] for j in _candidates(mask[i]))))
    return sum(losses) / len(losses)


def ref_soft_ce(logits, targets, t=1.0, weight=None):
    num, den = 0.0, 0.0
    for i in range(logits.shape[0]):
        p = ref_softmax_row(logits[i], t)
        loss = -sum(targets[i, j] * torch.log(p[j]) for j in range(logits.shape[1])) * t * t
        w = 1.0 if weight is None else weight[i]
        num, den = num + w * loss, den + w
    return num / den


def ref_mse(logits, mask):
    num, rows = 0.0, 0
    for i in range(logits.shape[0]):
        if not mask[i].any():
            continue
        for j in range(logits.shape[1]):
            num = num + (1 / (1 + torch.exp(-logits[i, j])) - float(mask[i, j])) ** 2
        rows += 1
    return num / (rows * logits.shape[1])


# -- candidate_mask ---------------------------------------------------------------------------------


def test_candidate_mask_builds_rows():
    m = candidate_mask([[0, 2], [], [3, 3, 1]], 4)
    assert m.dtype == torch.bool
    assert m.tolist() == [[True, False, True, False], [False] * 4, [False, True, False, True]]
    assert candidate_mask([], 3).shape == (0, 3)


@pytest.mark.parametrize("ids, c", [([[0, 4]], 4), ([[-1]], 4), ([[0]], 0)])
def test_candidate_mask_rejects_bad_input(ids, c):
    with pytest.raises(ValueError):
        candidate_mask(ids, c)


# -- candidate_targets ------------------------------------------------------------------------------


def test_candidate_targets_by_hand():
    # exp(logits / T) over the candidates {0, 1} is (1, 2) for both temperatures below
    for t in (1.0, 2.0):
        logits = torch.tensor([[0.0, math.log(2.0) * t, 7.0, -3.0]], dtype=DT)
        out = candidate_targets(logits, _mask(["1100"]), temperature=t)
        torch.testing.assert_close(out, torch.tensor([[1 / 3, 2 / 3, 0.0, 0.0]], dtype=DT))


def test_candidate_targets_one_hot_and_empty_rows():
    logits = _randn(5, 5)
    out = candidate_targets(logits, MASK, temperature=0.5)
    assert out[1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]  # single candidate -> exactly one-hot
    torch.testing.assert_close(out[2], torch.softmax(logits[2] / 0.5, 0))  # no candidates -> full softmax
    assert (out[~(MASK | ~MASK.any(1, keepdim=True))] == 0).all()
    torch.testing.assert_close(out.sum(1), torch.ones(5, dtype=DT))


@pytest.mark.parametrize("t", [1.0, 0.3, 4.0])
def test_candidate_targets_matches_reference(t):
    logits = _randn(5, 5, seed=1)
    w = torch.randn(5, 5, dtype=DT)  # a random linear functional, to check the full Jacobian
    out = (candidate_targets(logits, MASK, t) * w).sum()
    ref = (ref_candidate_targets(logits, MASK, t) * w).sum()
    _assert_close_with_grads(out, ref, [logits])


def test_candidate_targets_ignore_non_candidate_logits():
    logits = _randn(5, 5, seed=2)
    w = torch.randn(5, 5, dtype=DT)
    (g,) = torch.autograd.grad((candidate_targets(logits, MASK) * w).sum(), logits)
    outside = ~MASK & MASK.any(1, keepdim=True)
    assert outside.any() and (g[outside] == 0).all()
    assert (g[~outside].abs() > 0).any()


@pytest.mark.parametrize("t", [0.0, -1.0, math.inf, math.nan, True])
def test_candidate_targets_rejects_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        candidate_targets(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), temperature=t)


def test_candidate_targets_rejects_bad_mask():
    with pytest.raises(ValueError, match="shape"):
        candidate_targets(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        candidate_targets(torch.zeros(2, 3), torch.ones(2, 3))


# -- NT-Xent ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.1, 0.5])
@pytest.mark.parametrize("b", [2, 4])
def test_ntxent_matches_reference(t, b):
    z0, z1 = _randn(b, 3, seed=3), _randn(b, 3, seed=4)
    _assert_close_with_grads(NTXentLoss(t)(z0, z1), ref_ntxent(z0, z1, t), [z0, z1])


def test_ntxent_is_scale_invariant_and_prefers_aligned_views():
    z0, z1 = _randn(4, 8, seed=5), _randn(4, 8, seed=6)
    loss = NTXentLoss(0.2)
    torch.testing.assert_close(loss(z0, z1), loss(3 * z0, 0.5 * z1))
    assert loss(z0, z0 + 0.01 * z1) < loss(z0, z1)


@pytest.mark.parametrize("world, b", [(2, 3), (3, 2), (2, 1)])
def test_ntxent_distributed_equals_single_device(world, b):
    t = 0.3
    g0, g1 = _randn(world * b, 5, seed=7), _randn(world * b, 5, seed=8)  # gathered batches (W*B, D)
    loss = NTXentLoss(t)
    per_rank = [
        loss(g0[r * b : (r + 1) * b], g1[r * b : (r + 1) * b], all_z0=g0, all_z1=g1, rank=r)
        for r in range(world)
    ]
    mean = sum(per_rank) / world
    _assert_close_with_grads(mean, loss(g0, g1), [g0, g1])
    _assert_close_with_grads(mean, ref_ntxent(g0, g1, t), [g0, g1])
    # each rank's loss differs from the others' (its anchors differ), so the check is not vacuous
    assert not torch.allclose(per_rank[0], per_rank[1])


def test_ntxent_needs_negatives():
    z = torch.randn(1, 4)
    with pytest.raises(ValueError, match="negative"):
        NTXentLoss()(z, z.clone())
    with pytest.raises(ValueError):
        NTXentLoss()(z[:0], z[:0])


@pytest.mark.parametrize("t", [0.0, -0.1, math.inf, math.nan, "0.1"])
def test_ntxent_rejects_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(t)


def test_ntxent_rejects_bad_shapes():
    loss = NTXentLoss()
    a, g = torch.randn(2, 4), torch.randn(6, 4)
    bad = [
        dict(z0=a, z1=torch.randn(3, 4)),
        dict(z0=a, z1=torch.randn(2, 5)),
        dict(z0=a.flatten(), z1=a.flatten()),
        dict(z0=a, z1=a, all_z0=g),
        dict(z0=a, z1=a, all_z0=g, all_z1=torch.randn(4, 4)),
        dict(z0=a, z1=a, all_z0=torch.randn(6, 3), all_z1=torch.randn(6, 3)),
        dict(z0=a, z1=a, all_z0=torch.randn(5, 4), all_z1=torch.randn(5, 4)),
        dict(z0=a, z1=a, all_z0=g.flatten(), all_z1=g.flatten()),
        dict(z0=a, z1=a, all_z0=g, all_z1=g, rank=3),
        dict(z0=a, z1=a, all_z0=g, all_z1=g, rank=-1),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            loss(**kwargs)


# -- partial-label losses ---------------------------------------------------------------------------


def test_candidate_loss_matches_reference():
    logits = _randn(5, 5, seed=9)
    _assert_close_with_grads(CandidateLoss()(logits, MASK), ref_cc(logits, MASK), [logits])


def ref_outside_weights(mask_row, lam):
    """ALIM's per-class weight: 1 on the candidates (all, without any), lam elsewhere."""
    cands = _candidates(mask_row)
    return [1.0 if j in cands else lam for j in range(len(mask_row))]


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5])
def test_candidate_loss_outside_weight_matches_reference(lam):
    """-log(sum_S p_j / q_j + lam * sum_notS p_j / q_j); lam 0 is the plain CC loss."""
    logits = _randn(5, 5, seed=29)
    prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=DT)
    losses = []
    for i in range(5):
        p, w = ref_softmax_row(logits[i]), ref_outside_weights(MASK[i], lam)
        if not MASK[i].any():
            losses.append(logits[i].sum() * 0.0)
            continue
        losses.append(-torch.log(sum(w[j] * p[j] / prior[j] for j in range(5))))
    out = CandidateLoss(outside=lam)(logits, MASK, log_prior=prior.log())
    _assert_close_with_grads(out, sum(losses) / 5, [logits])


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_candidate_targets_outside_weight_matches_reference(lam):
    logits = _randn(5, 5, seed=31)
    rows = []
    for i in range(5):
        e = [w * torch.exp(logits[i, j] / 2.0) for j, w in enumerate(ref_outside_weights(MASK[i], lam))]
        rows.append(torch.stack([x / sum(e) for x in e]))
    torch.testing.assert_close(candidate_targets(logits, MASK, 2.0, outside=lam), torch.stack(rows))


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.1"])
def test_outside_weight_is_checked(bad):
    with pytest.raises(ValueError, match="outside"):
        CandidateLoss(outside=bad)
    with pytest.raises(ValueError, match="outside"):
        candidate_targets(_randn(2, 5, seed=1), MASK[:2], outside=bad)


def test_candidate_loss_with_prior_matches_reference():
    logits = _randn(5, 5, seed=19)
    prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=DT)
    out = CandidateLoss()(logits, MASK, log_prior=prior.log())
    _assert_close_with_grads(out, ref_cc_prior(logits, MASK, prior), [logits])
    # a uniform prior only adds a constant: same gradients as the plain loss
    flat = torch.full((5,), 0.2, dtype=DT).log()
    g_flat = torch.autograd.grad(CandidateLoss()(logits, MASK, log_prior=flat), [logits])[0]
    g_plain = torch.autograd.grad(CandidateLoss()(logits, MASK), [logits])[0]
    torch.testing.assert_close(g_flat, g_plain)
    with pytest.raises(ValueError):
        CandidateLoss()(logits, MASK, log_prior=prior[:4].log())


def test_candidate_loss_special_rows():
    logits = _randn(5, 5, seed=10)
    per_row = CandidateLoss(reduction="none")(logits, MASK)
    torch.testing.assert_close(per_row[1], F.cross_entropy(logits[1:2], torch.tensor([2])))  # one candidate
    assert per_row[2].item() == 0.0 and per_row[3].item() == 0.0  # no candidates / all candidates
    torch.testing.assert_close(CandidateLoss(reduction="sum")(logits, MASK), per_row.sum())
    # stable for huge logits, where a naive log(sum(softmax)) underflows
    big = torch.tensor([[1000.0, 0.0, -1000.0]], dtype=torch.float32)
    out = CandidateLoss()(big, _mask(["011"]))
    assert torch.isfinite(out) and abs(out.item() - 1000.0) < 1e-3


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_soft_target_ce_matches_reference(t):
    logits = _randn(5, 5, seed=11)
    teacher = torch.randn(5, 5, dtype=DT)
    targets = candidate_targets(teacher, MASK, temperature=t)
    weight = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0], dtype=DT, requires_grad=True)
    for w in (None, weight):
        out = SoftTargetCrossEntropy(t)(logits, targets, w)
        ref = ref_soft_ce(logits, targets, t, w)
        _assert_close_with_grads(out, ref, [logits] if w is None else [logits, w])


def test_soft_target_ce_reductions_and_zero_weight():
    logits, targets = _randn(3, 4, seed=12), torch.full((3, 4), 0.25, dtype=DT)
    per_row = SoftTargetCrossEntropy(reduction="none")(logits, targets)
    assert per_row.shape == (3,)
    torch.testing.assert_close(SoftTargetCrossEntropy(reduction="sum")(logits, targets), per_row.sum())
    zero = SoftTargetCrossEntropy()(logits, targets, torch.zeros(3, dtype=DT))
    assert zero.item() == 0.0
    (g,) = torch.autograd.grad(zero, logits)
    assert (g == 0).all()
    empty = SoftTargetCrossEntropy()(logits[:0], targets[:0])
    assert empty.item() == 0.0 and empty.requires_grad


def test_soft_target_ce_rejects_bad_input():
    loss = SoftTargetCrossEntropy()
    logits = torch.zeros(2, 3)
    good = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    loss(logits, good)
    loss(logits, good + 1e-6)  # within the tolerance
    with pytest.raises(ValueError, match="sum"):
        loss(logits, torch.tensor([[0.2, 0.3, 0.4], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        loss(logits, torch.tensor([[1.2, -0.2, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        loss(logits, good[:1])
    with pytest.raises(ValueError, match="weight"):
        loss(logits, good, torch.ones(3))
    with pytest.raises(ValueError, match="weight"):
        loss(logits, good, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetCrossEntropy(0)
    with pytest.raises(ValueError, match="reduction"):
        SoftTargetCrossEntropy(reduction="avg")


def test_proden_loss_matches_reference():
    logits = _randn(5, 5, seed=13)
    targets = candidate_targets(logits.detach(), MASK)
    out = ProdenLoss()(logits, targets)
    _assert_close_with_grads(out, ref_soft_ce(logits, targets), [logits])
    # initial table: uniform over the candidates
    uniform = candidate_targets(torch.zeros(5, 5), MASK)
    torch.testing.assert_close(uniform[0], torch.tensor([0.5, 0.5, 0, 0, 0]))
    with pytest.raises(ValueError, match="sum"):
        ProdenLoss()(logits, MASK.to(DT))  # a raw indicator is not a probability table


def test_mse_baseline_matches_reference():
    logits = _randn(5, 5, seed=14)
    _assert_close_with_grads(CandidateIndicatorMSELoss()(logits, MASK), ref_mse(logits, MASK), [logits])
    per_row = CandidateIndicatorMSELoss(reduction="none")(logits, MASK)
    assert per_row[2].item() == 0.0  # no candidates: left out
    with pytest.raises(ValueError, match="bool"):
        CandidateIndicatorMSELoss()(logits, MASK.float())


@pytest.mark.parametrize("cls", [CandidateLoss, CandidateIndicatorMSELoss])
def test_mask_losses_check_arguments(cls):
    with pytest.raises(ValueError, match="reduction"):
        cls(reduction="max")
    with pytest.raises(ValueError, match="shape"):
        cls()(torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        cls()(torch.zeros(3), torch.ones(3, dtype=torch.bool))
    assert cls()(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 3, dtype=torch.bool)).item() == 0.0


# -- property: no gradient pressure on classes outside the candidate set ---------------------------


def _cc(logits, mask):
    return CandidateLoss()(logits, mask)


def _proden(logits, mask, targets_from=None):
    targets = candidate_targets((logits if targets_from is None else targets_from).detach(), mask)
    return ProdenLoss()(logits, targets)


PL_LOSSES = pytest.mark.parametrize("loss_fn", [_cc, _proden], ids=["cc", "proden"])
# every row has a proper, non-empty candidate subset
PROPER = _mask(["11000", "00100", "01011", "10001", "00110"])


@PL_LOSSES
@pytest.mark.parametrize("seed", range(5))
def test_no_push_up_outside_candidates(loss_fn, seed):
    logits = _randn(5, 5, seed=100 + seed)
    (g,) = torch.autograd.grad(loss_fn(logits, PROPER), logits)
    assert (g[~PROPER] > 0).all()  # descent lowers every non-candidate logit
    torch.testing.assert_close(g.sum(1), torch.zeros(5, dtype=DT))  # shift invariance, to first order


@PL_LOSSES
def test_invariant_to_constant_shift(loss_fn):
    logits = _randn(5, 5, seed=15)
    shift = torch.tensor([[3.0], [-7.0], [0.5], [100.0], [-2.0]], dtype=DT)
    torch.testing.assert_close(loss_fn(logits + shift, PROPER), loss_fn(logits, PROPER))


@PL_LOSSES
def test_moving_mass_into_the_candidate_set_lowers_the_loss(loss_fn):
    # swap a non-candidate's logit with a smaller candidate logit: the partition function is
    # unchanged, the candidate gains exactly the mass the non-candidate loses
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=DT)
    mask = _mask(["1100"])
    moved = torch.tensor([[0.5, 2.0, -1.0, 0.0]], dtype=DT)
    if loss_fn is _proden:  # fixed targets from the table, as within one PRODEN epoch
        before, after = loss_fn(logits, mask, logits), loss_fn(moved, mask, logits)
    else:
        before, after = loss_fn(logits, mask), loss_fn(moved, mask)
    assert after < before - 1e-3
