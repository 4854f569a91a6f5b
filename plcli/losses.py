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


def candidate_targets(logits: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Probabilities at temperature ``T`` restricted to each row's candidate set and renormalised.

    Row ``i`` is ``softmax(logits[i] / T)`` with the non-candidate logits set to -inf, so it is 0
    outside the candidate set, sums to 1, and a single candidate gives a one-hot row. A row without
    candidates (all-False mask) gets the full ``softmax(logits[i] / T)``.

    The result is differentiable w.r.t. ``logits`` (and independent of the non-candidate logits);
    pass ``logits.detach()`` to use it as a fixed target, as PRODEN and distillation do.
    """
    _check_temperature(temperature)
    _check_logits_mask(logits, mask)
    allowed = _allowed(mask)  # (B, C)
    return torch.softmax((logits / temperature).masked_fill(~allowed, -math.inf), dim=1)


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

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction

    def forward(self, logits: Tensor, mask: Tensor, log_prior: Tensor | None = None) -> Tensor:
        _check_logits_mask(logits, mask)
        allowed = _allowed(mask)  # (B, C)
        inside = logits
        if log_prior is not None:
            if log_prior.shape != logits.shape[1:]:
                raise ValueError(f"log_prior must have shape ({logits.shape[1]},), got {tuple(log_prior.shape)}")
            # rows without candidates stay at loss 0: no prior shift there
            inside = logits - log_prior.to(logits.dtype) * mask.any(dim=1, keepdim=True)
        # (B,); the masked -inf entries get zero gradient through masked_fill
        per_row = torch.logsumexp(logits, dim=1) - torch.logsumexp(
            inside.masked_fill(~allowed, -math.inf), dim=1
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
                f"logits and targets must both have shape (B, C), got {tuple(logits.shape)} and {tuple(targets.shape)}"
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


def _allowed(mask: Tensor) -> Tensor:
    """The candidate mask with all-False rows ("no candidates") turned all-True."""
    return mask | ~mask.any(dim=1, keepdim=True)


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
