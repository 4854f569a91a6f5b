"""Loss functions: SimCLR pretraining, partial-label fine-tuning and candidate-restricted distillation.

Conventions shared by the candidate-set losses:

- ``logits`` is a ``(B, C)`` float tensor, ``mask`` a ``(B, C)`` bool tensor, True for the classes in
  a row's candidate set (build it with :func:`candidate_mask`).
- A row whose mask is all False has *no candidates*: nothing is known about its label, and it is
  treated as if every class were a candidate. The candidate-set losses then give it no
  supervision (zero loss, or zero gradient).
- Mean reductions over zero rows (an empty batch, or a total weight of zero) give 0, still
  connected to the graph, so a training step never has to special-case them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_REDUCTIONS = ("mean", "sum", "none")


def candidate_mask(
    candidate_ids: list[list[int]], num_classes: int, device: torch.device | str | None = None
) -> Tensor:
    """Build the ``(B, C)`` bool candidate mask from per-row lists of class indices.

    Row ``i`` is True at every index in ``candidate_ids[i]`` (duplicates are harmless). An empty
    list gives an all-False row, which the losses read as "no candidates".
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    rows = [i for i, ids in enumerate(candidate_ids) for _ in ids]
    cols = [int(j) for ids in candidate_ids for j in ids]
    bad = [j for j in cols if not 0 <= j < num_classes]
    if bad:
        raise ValueError(f"candidate ids must lie in [0, {num_classes}), got {bad[0]}")
    mask = torch.zeros(len(candidate_ids), num_classes, dtype=torch.bool, device=device)
    if cols:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = True
    return mask


def candidate_targets(logits: Tensor, mask: Tensor, temperature: float = 1.0, outside: float = 0.0) -> Tensor:
    """Probabilities at temperature ``T`` restricted to each row's candidate set and renormalised.

    Row ``i`` is ``softmax(logits[i] / T)`` with the non-candidate logits set to -inf, so it is 0
    outside the candidate set, sums to 1, and a single candidate gives a one-hot row. A row without
    candidates (all-False mask) gets the full ``softmax(logits[i] / T)``.

    ``outside`` λ in [0, 1) keeps the non-candidates at λ times their probability instead (ALIM,
    Xu et al. 2023, "ALIM: Adjusting Label Importance Mechanism for Noisy Partial Label Learning",
    https://arxiv.org/abs/2301.12077): a row whose set misses its truth can still point at it.

    The result is differentiable w.r.t. ``logits``; pass ``logits.detach()`` to use it as a fixed
    target, as PRODEN and distillation do.
    """
    _check_temperature(temperature)
    _check_outside(outside)
    _check_logits_mask(logits, mask)
    return torch.softmax(logits / temperature + _log_weights(mask, outside, logits.dtype), dim=1)


def candidate_log_prior(mask: Tensor, smoothing: float = 1.0) -> Tensor:
    """(C,) log share of candidate slots per class, add-``smoothing`` smoothed, from an (N, C) mask.

    The prior correction of finetune and distill: if distractors are drawn in proportion to
    popularity pi, restricting p(j|x) / pi_j to a candidate set cancels frequent classes' head start.
    """
    counts = mask.float().sum(0) + smoothing
    return torch.log(counts / counts.sum())


class NTXentLoss(nn.Module):
    """Normalized temperature-scaled cross-entropy loss (NT-Xent) of SimCLR.

    Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
    https://arxiv.org/abs/2002.05709

    ``z0`` and ``z1`` are the ``(B, D)`` projections of two augmented views of the same ``B`` clips;
    they are L2-normalised here. Each of the ``2B`` embeddings is an anchor whose positive is the
    other view of its clip and whose negatives are the remaining ``2B - 2`` embeddings; the loss is
    the mean over anchors of the cross-entropy of the cosine similarities divided by the
    temperature.

    Across devices, pass the gathered embeddings of all ``W`` ranks as ``all_z0`` / ``all_z1``
    (``(W * B, D)``, e.g. ``self.all_gather(z, sync_grads=True).flatten(0, 1)`` -- only when
    ``W > 1``: Lightning returns the tensor unchanged on a single device) and this rank's index as
    ``rank``. The anchors are then the local rows only, the negatives come from the whole gathered
    batch (``2 * W * B - 2`` of them), and the positive of local row ``i`` is global row
    ``rank * B + i``. The mean over ranks of the per-rank losses equals the single-device loss on
    the concatenated batch, and so do the gradients once they are summed by the gather's backward
    and averaged by DDP.

    Args:
        temperature: Softmax temperature, > 0.

    Raises:
        ValueError: on a non-positive temperature, mismatched shapes, or a batch with no negatives.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = float(temperature)

    def forward(
        self,
        z0: Tensor,
        z1: Tensor,
        all_z0: Tensor | None = None,
        all_z1: Tensor | None = None,
        rank: int = 0,
    ) -> Tensor:
        if z0.ndim != 2 or z0.shape != z1.shape:
            raise ValueError(
                f"z0 and z1 must both have shape (B, D), got {tuple(z0.shape)} and {tuple(z1.shape)}"
            )
        b = z0.shape[0]
        if (all_z0 is None) != (all_z1 is None):
            raise ValueError("all_z0 and all_z1 must be given together")
        if all_z0 is None:
            all_z0, all_z1, rank = z0, z1, 0
        else:
            if all_z0.ndim != 2 or all_z0.shape != all_z1.shape or all_z0.shape[1] != z0.shape[1]:
                raise ValueError(
                    f"all_z0 and all_z1 must both have shape (W * B, D) with D = {z0.shape[1]}, "
                    f"got {tuple(all_z0.shape)} and {tuple(all_z1.shape)}"
                )
            if b == 0 or all_z0.shape[0] % b != 0:
                raise ValueError(f"gathered batch of {all_z0.shape[0]} rows is not a multiple of B = {b}")
            world = all_z0.shape[0] // b
            if not 0 <= rank < world:
                raise ValueError(f"rank must lie in [0, {world}), got {rank}")
        n = all_z0.shape[0]
        if 2 * n - 2 < 1:
            raise ValueError(
                f"NT-Xent needs at least one negative; a global batch of {n} clip(s) has none (use B >= 2)"
            )

        anchors = F.normalize(torch.cat([z0, z1]), dim=1)  # (2B, D)
        others = F.normalize(torch.cat([all_z0, all_z1]), dim=1)  # (2N, D)
        logits = anchors @ others.T / self.temperature  # (2B, 2N)

        # global row of local row i is rank*B + i; its other view sits n rows further (mod 2N)
        local = torch.arange(b, device=z0.device) + rank * b
        self_idx = torch.cat([local, local + n])  # (2B,)
        pos_idx = torch.cat([local + n, local])  # (2B,)
        rows = torch.arange(2 * b, device=z0.device)
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[rows, self_idx] = True
        logits = logits.masked_fill(is_self, -math.inf)
        return F.cross_entropy(logits, pos_idx)


class CandidateLoss(nn.Module):
    """Classifier-consistent (CC) partial-label loss: minus the log-probability of the candidate set.

    Feng et al. 2020, "Provably Consistent Partial-Label Learning", https://arxiv.org/abs/2007.08929

    Per row, ``-log sum_{j in S} softmax(logits)_j``, computed as
    ``logsumexp(logits) - logsumexp(logits[S])``. A single candidate gives ordinary cross-entropy;
    a row without candidates counts as "all classes" and has loss 0.

    With ``log_prior`` (``(C,)``, log q_j) the loss is ``-log sum_{j in S} softmax(logits)_j / q_j``:
    the negative log-likelihood of the candidate set when the set is the true label plus
    distractors that are drawn with probability q_j each, so that ``P(S | y = j)`` is proportional
    to ``1 / q_j`` (up to a factor that depends on S only, hence constant for the gradient). Without
    it, classes that are candidates of most rows (popular chat messages) explain every set for free.
    The value may then be negative.

    Args:
        reduction: "mean" (over rows), "sum" or "none" (``(B,)`` per-row losses).
    """

    def __init__(self, reduction: str = "mean", outside: float = 0.0):
        super().__init__()
        _check_reduction(reduction)
        _check_outside(outside)
        self.reduction = reduction
        self.outside = outside

    def forward(self, logits: Tensor, mask: Tensor, log_prior: Tensor | None = None) -> Tensor:
        _check_logits_mask(logits, mask)
        inside = logits
        if log_prior is not None:
            if log_prior.shape != logits.shape[1:]:
                raise ValueError(f"log_prior must have shape ({logits.shape[1]},), got "
                                 f"{tuple(log_prior.shape)}")
            # rows without candidates stay at loss 0: no prior shift there
            inside = logits - log_prior.to(logits.dtype) * mask.any(dim=1, keepdim=True)
        # (B,); -log(sum_S p_j / q_j + outside * sum_not-S p_j / q_j)
        per_row = torch.logsumexp(logits, dim=1) - torch.logsumexp(
            inside + _log_weights(mask, self.outside, logits.dtype), dim=1
        )
        return _reduce(per_row, self.reduction)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets at temperature ``T``, scaled by ``T**2``.

    Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
    https://arxiv.org/abs/1503.02531

    Per row, ``-T**2 * sum_j target_j * log_softmax(logits / T)_j``; the ``T**2`` factor keeps
    gradient magnitudes comparable across temperatures. ``targets`` rows must be probability
    vectors (non-negative, summing to 1 within a dtype-dependent tolerance), e.g. from
    :func:`candidate_targets` on the teacher's logits. An optional per-row ``weight`` ``(B,)``
    (non-negative) turns the mean into a weighted mean ``sum(w * l) / sum(w)``.

    Args:
        temperature: Softmax temperature applied to the student's logits, > 0.
        reduction: "mean", "sum" or "none" (``(B,)`` per-row losses, multiplied by the weights).
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "mean"):
        super().__init__()
        _check_temperature(temperature)
        _check_reduction(reduction)
        self.temperature = float(temperature)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if logits.ndim != 2 or targets.shape != logits.shape:
            raise ValueError(
                f"logits and targets must both have shape (B, C), got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        if weight is not None and weight.shape != logits.shape[:1]:
            raise ValueError(f"weight must have shape ({logits.shape[0]},), got {tuple(weight.shape)}")
        _check_probabilities(targets)
        if weight is not None and not bool((weight >= 0).all() & weight.isfinite().all()):
            raise ValueError("weight must be finite and non-negative")
        t = self.temperature
        log_p = F.log_softmax(logits / t, dim=1)  # (B, C)
        per_row = -(targets * log_p).sum(dim=1) * (t * t)  # (B,)
        return _reduce(per_row, self.reduction, weight)


class ProdenLoss(SoftTargetCrossEntropy):
    """PRODEN: cross-entropy against progressively re-estimated candidate-restricted targets.

    Lv et al. 2020, "Progressive Identification of True Labels for Partial-Label Learning",
    https://arxiv.org/abs/2002.08053

    The caller keeps a ``(N, C)`` target table, initialised uniform over each row's candidates
    (``candidate_targets(torch.zeros(N, C), mask)``) and re-estimated from the model as
    ``candidate_targets(logits.detach(), mask)`` every epoch; this loss is the cross-entropy
    against the current rows of that table (temperature 1).

    Args:
        reduction: "mean", "sum" or "none".
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__(temperature=1.0, reduction=reduction)


class CandidateIndicatorMSELoss(nn.Module):
    """Baseline: mean squared error between ``sigmoid(logits)`` and the 0/1 candidate indicator.

    Each class is scored independently and pushed towards 1 inside the candidate set and 0 outside;
    the loss is the mean over classes and rows. Rows without candidates carry no information and
    are left out of the mean (weight 0).

    Args:
        reduction: "mean", "sum" or "none" (``(B,)`` per-row means over classes).
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        _check_logits_mask(logits, mask)
        per_row = (torch.sigmoid(logits) - mask.to(logits.dtype)).square().mean(dim=1)  # (B,)
        has_candidates = mask.any(dim=1).to(logits.dtype)  # (B,)
        return _reduce(per_row, self.reduction, has_candidates)


# -- helpers ---------------------------------------------------------------------------------------


class CandidateCTCLoss(nn.Module):
    """CTC over a candidate set of transcripts: minus the log-likelihood of the set.

    Graves et al. 2006, "Connectionist Temporal Classification", https://www.cs.toronto.edu/~graves/icml_2006.pdf;
    the sum over alternative transcripts follows GTC, Moritz, Hori and Le Roux 2020, "Semi-Supervised
    Speech Recognition via Graph-based Temporal Classification", https://arxiv.org/abs/2010.15653.

    Per row, ``-log sum_{k in S} p_CTC(c_k | x)`` over the row's valid candidate texts ``c_k``: the
    sum of the CTC likelihoods of the candidates, so the audio is free to explain itself with any
    one of them. A row with one candidate is plain CTC (an exact label).

    ``log_prior`` (``(B, K)``, log q of each candidate's message) gives the prior-corrected set
    likelihood ``-log sum_k p_CTC(c_k|x) / q_k`` (see :class:`CandidateLoss`). ``weights``
    (``(B, K)``, non-negative, zero outside the valid candidates, e.g. PRODEN's current beliefs)
    replace the set likelihood by the weighted CTC loss ``sum_k w_k * -log p_CTC(c_k|x)``.

    A candidate that no alignment can produce (``input_length < target_length + repeats``, CTC
    needs a blank between repeated tokens) has likelihood 0 and drops out of the sum; a row with no
    valid, feasible candidate has loss 0.

    Shapes: ``log_probs`` (T, B, V) log-softmax over V tokens (blank included), ``input_lengths``
    (B,), ``targets`` (B, K, L) token ids padded to L, ``target_lengths`` (B, K), ``mask`` (B, K)
    bool, True for the candidates that exist.

    Args:
        blank: index of the CTC blank token.
        reduction: "mean" (over rows), "sum" or "none" (``(B,)`` per-row losses).
    """

    def __init__(self, blank: int = 0, reduction: str = "mean"):
        super().__init__()
        _check_reduction(reduction)
        if isinstance(blank, bool) or not isinstance(blank, int) or blank < 0:
            raise ValueError(f"blank must be a non-negative int, got {blank!r}")
        self.blank = blank
        self.reduction = reduction

    def forward(self, log_probs: Tensor, input_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
                mask: Tensor, log_prior: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        nll = candidate_ctc_nll(log_probs, input_lengths, targets, target_lengths, mask, self.blank)  # (B, K)
        valid = torch.isfinite(nll)
        has_any = valid.any(dim=1)  # (B,)
        if weights is not None:
            if log_prior is not None:
                raise ValueError("give log_prior or weights, not both")
            if weights.shape != nll.shape:
                raise ValueError(f"weights must have shape {tuple(nll.shape)}, got {tuple(weights.shape)}")
            if bool((weights < 0).any()) or bool((weights.masked_fill(mask, 0) != 0).any()):
                raise ValueError("weights must be non-negative and zero outside the candidates")
            per_row = (weights.to(nll.dtype) * nll.masked_fill(~valid, 0.0)).sum(dim=1)
            return _reduce(per_row + log_probs.clamp_min(-1e4).sum() * 0, self.reduction)
        inside = -nll  # (B, K) log p_CTC(c_k | x), -inf where invalid
        if log_prior is not None:
            if log_prior.shape != nll.shape:
                raise ValueError(
                    f"log_prior must have shape {tuple(nll.shape)}, got {tuple(log_prior.shape)}"
                )
            inside = inside - log_prior.to(nll.dtype).masked_fill(~valid, 0.0)
        # rows with nothing valid: logsumexp of a finite stand-in, then zeroed (no NaN gradients)
        inside = torch.where(has_any.unsqueeze(1), inside, torch.zeros_like(inside))
        # zero that stays connected to the graph even when no pair was scored (clamp: -inf * 0 is NaN)
        zero = log_probs.clamp_min(-1e4).sum() * 0
        per_row = torch.where(has_any, -torch.logsumexp(inside, dim=1), zero)
        return _reduce(per_row, self.reduction)


def ctc_feasible(input_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """``(B, K)`` bool: can a CTC path of ``input_lengths[b]`` frames emit ``targets[b, k]``?

    It needs one frame per token plus a blank between each pair of equal neighbours.
    """
    L = targets.shape[-1]
    pos = torch.arange(L, device=targets.device)
    inside = pos.view(1, 1, L) < target_lengths.unsqueeze(-1)  # (B, K, L)
    rep = torch.zeros_like(inside)
    if L > 1:
        rep[..., 1:] = (targets[..., 1:] == targets[..., :-1]) & inside[..., 1:]
    need = target_lengths + rep.sum(dim=-1)  # (B, K)
    return (target_lengths > 0) & (need <= input_lengths.unsqueeze(1))


def candidate_ctc_nll(log_probs: Tensor, input_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
                      mask: Tensor, blank: int = 0) -> Tensor:
    """``(B, K)`` CTC negative log-likelihood of every candidate text; +inf where a candidate is
    missing (``mask`` False) or infeasible. One batched ``F.ctc_loss`` call over the valid pairs."""
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must have shape (T, B, V), got {tuple(log_probs.shape)}")
    T, B, V = log_probs.shape
    if targets.ndim != 3 or targets.shape[0] != B:
        raise ValueError(f"targets must have shape ({B}, K, L), got {tuple(targets.shape)}")
    K = targets.shape[1]
    for name, t, shape in (("target_lengths", target_lengths, (B, K)), ("mask", mask, (B, K)),
                           ("input_lengths", input_lengths, (B,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if not 0 <= blank < V:
        raise ValueError(f"blank {blank} is not a token index in [0, {V})")
    if bool((input_lengths > T).any()) or bool((input_lengths < 0).any()):
        raise ValueError(f"input_lengths must lie in [0, {T}]")
    if bool((target_lengths > targets.shape[2]).any()):
        raise ValueError("target_lengths exceed the padded target length")
    used = torch.arange(targets.shape[2], device=targets.device).view(1, 1, -1) < target_lengths.unsqueeze(-1)
    if bool(((targets == blank) & used & mask.unsqueeze(-1)).any()):
        raise ValueError(f"targets contain the blank token {blank}")
    ok = mask & ctc_feasible(input_lengths, targets, target_lengths)  # (B, K)
    nll = torch.full((B, K), math.inf, dtype=log_probs.dtype, device=log_probs.device)
    b, k = ok.nonzero(as_tuple=True)
    if not b.numel():
        return nll

    def exact(sel) -> Tensor:
        # F.ctc_loss on the pairs ``sel`` of (b, k): (T, N, V) with one column per pair
        return F.ctc_loss(log_probs[:, b[sel]], targets[b[sel], k[sel]], input_lengths[b[sel]],
                          target_lengths[b[sel], k[sel]], blank=blank, reduction="none", zero_infinity=False)

    if not (torch.is_grad_enabled() and log_probs.requires_grad) and bool((input_lengths[b] == T).all()):
        # scoring: the scaled forward pass, with F.ctc_loss only for the pairs it cannot resolve
        per_pair = scaled_ctc_nll(log_probs, b, targets[b, k], target_lengths[b, k],
                                  blank).to(log_probs.dtype)
        redo = ~torch.isfinite(per_pair)
        if bool(redo.any()):
            per_pair[redo] = exact(redo)
    else:
        per_pair = exact(slice(None))
    return nll.index_put((b, k), per_pair)


def scaled_ctc_nll(log_probs: Tensor, rows: Tensor, targets: Tensor, target_lengths: Tensor,
                   blank: int = 0) -> Tensor:
    """``(N,)`` CTC negative log-likelihood of ``targets[n]`` under column ``rows[n]`` of
    ``log_probs`` (T, B, V), over all T frames; no gradient.

    The CTC forward recursion (Graves et al. 2006) in the probability domain, rescaled to sum 1 at
    every frame with the log scales summed, as for HMMs (Rabiner 1989), in float64. It gives what
    ``F.ctc_loss(reduction="none")`` gives, several times faster on CPU: no exp/log per lattice
    cell, and no log-alpha table kept for a backward pass. Scoring 10 candidates per clip spends most
    of its time here. A pair whose mass underflows comes out as inf or NaN; ``candidate_ctc_nll``
    recomputes those with ``F.ctc_loss``.

    ``targets`` (N, L) long, padded; ``target_lengths`` (N,) >= 1, each feasible in T frames.
    """
    T, B, V = log_probs.shape
    N, L = targets.shape
    S = 2 * L + 1
    # (N, S) extended labels: blank, c1, blank, c2, ..., blank
    ext = torch.full((N, S), blank, dtype=torch.long, device=targets.device)
    ext[:, 1::2] = targets
    # a state may be entered from two back (skipping a blank) when it is a label unlike the one before
    skip = ((ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])).double()  # (N, S - 2)
    flat = (rows.view(N, 1) * V + ext).view(-1)  # (N * S,) indices into a flattened (B, V) frame
    p = log_probs.detach().double().exp().reshape(T, B * V)
    alpha = torch.zeros(N, S, dtype=torch.float64, device=log_probs.device)
    alpha[:, :2] = p[0].index_select(0, flat).view(N, S)[:, :2]
    scale = alpha.sum(1)
    alpha /= scale.unsqueeze(1)
    log_scale = scale.log()
    nxt = torch.empty_like(alpha)
    for t in range(1, T):
        nxt[:, 0] = alpha[:, 0]
        torch.add(alpha[:, 1:], alpha[:, :-1], out=nxt[:, 1:])
        nxt[:, 2:].addcmul_(alpha[:, :-2], skip)
        nxt.mul_(p[t].index_select(0, flat).view(N, S))
        scale = nxt.sum(1)
        nxt /= scale.unsqueeze(1)
        log_scale += scale.log()
        alpha, nxt = nxt, alpha
    end = (2 * target_lengths).view(N, 1)  # the final blank; the final label is one before it
    last = alpha.gather(1, end).squeeze(1) + alpha.gather(1, end - 1).squeeze(1)
    return -(last.log() + log_scale)


def _allowed(mask: Tensor) -> Tensor:
    """The candidate mask with all-False rows ("no candidates") turned all-True."""
    return mask | ~mask.any(dim=1, keepdim=True)


def _log_weights(mask: Tensor, outside: float, dtype: torch.dtype) -> Tensor:
    """(B, C) log weight of each class: 0 on the candidates (every class of a row without any), log
    ``outside`` elsewhere (-inf for 0)."""
    zero = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zero.masked_fill(~_allowed(mask), math.log(outside) if outside > 0 else -math.inf)


def _check_outside(outside: float) -> None:
    if isinstance(outside, bool) or not isinstance(outside, (int, float)) or not 0.0 <= outside < 1.0:
        raise ValueError(f"outside must be in [0, 1), got {outside!r}")


def _check_temperature(temperature: float) -> None:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")


def _check_logits_mask(logits: Tensor, mask: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must have shape (B, C) with C >= 1, got {tuple(logits.shape)}")
    if mask.shape != logits.shape:
        raise ValueError(f"mask must have the shape of logits {tuple(logits.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")


def _check_probabilities(targets: Tensor) -> None:
    if targets.numel() == 0:
        return
    tol = max(1e-4, 10 * torch.finfo(targets.dtype).eps)
    t = targets.detach().double()
    if not bool((t >= -tol).all()) or not bool(((t.sum(dim=1) - 1).abs() <= tol).all()):
        raise ValueError(
            f"targets rows must be probability vectors (non-negative, summing to 1 within {tol:g}); "
            f"row sums range over [{t.sum(dim=1).min().item():.6g}, {t.sum(dim=1).max().item():.6g}]"
        )


def _reduce(per_row: Tensor, reduction: str, weight: Tensor | None = None) -> Tensor:
    """Reduce ``(B,)`` losses; a weighted mean is ``sum(w * l) / sum(w)``, and 0 over zero weight."""
    if weight is not None:
        per_row = per_row * weight.to(per_row.dtype)
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    denom = per_row.new_tensor(per_row.shape[0]) if weight is None else weight.to(per_row.dtype).sum()
    return total / denom.clamp_min(1.0 if weight is None else torch.finfo(per_row.dtype).tiny)
