"""The metrics every stage, ``plcli evaluate`` and the benchmark compute: pure functions on arrays.

Conventions:

- ``probs`` is ``(N, C)`` class probabilities (or any scores), ``pred`` ``(N,)`` predicted class indices.
- ``y`` is ``(N,)`` true class indices; ``-1`` marks a true label outside the model's vocabulary:
  it can never be predicted, so it counts as an error wherever accuracy is computed, and as a
  false positive for the predicted class in the per-class table; ``-2`` marks a row without a
  truth (see ``plcli.data.labels.class_indices``).
- ``mask`` is ``(N, C)`` bool, True for the classes in a row's candidate set; an all-False row has
  no candidates.
- Averages over zero rows are ``nan`` (written as ``null`` in JSON): "not measurable", not 0.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def restricted_predictions(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) argmax over each row's candidates; rows without candidates take the plain argmax.

    Also takes torch tensors (logits and a bool mask on any device) and then returns a tensor.
    """
    if hasattr(probs, "masked_fill"):
        allowed = mask | ~mask.any(dim=1, keepdim=True)
        return probs.masked_fill(~allowed, float("-inf")).argmax(dim=1)
    probs, mask = np.asarray(probs), np.asarray(mask, dtype=bool)
    if probs.shape != mask.shape:
        raise ValueError(f"probs {probs.shape} and mask {mask.shape} must have the same shape")
    allowed = mask | ~mask.any(axis=1, keepdims=True)
    return np.where(allowed, probs, -np.inf).argmax(axis=1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of rows with ``pred == y`` (a ``-1`` truth is never matched)."""
    pred, y = np.asarray(pred), np.asarray(y)
    return _mean(pred == y)


def within_candidate_accuracy(probs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy of the candidate-restricted argmax, over the rows that have candidates."""
    mask = np.asarray(mask, dtype=bool)
    has = mask.any(axis=1)
    return accuracy(restricted_predictions(probs, mask)[has], np.asarray(y)[has])


def candidate_chance(mask: np.ndarray) -> float:
    """Expected accuracy of a uniform guess among each row's candidates: mean of ``1 / |set|`` over the
    rows that have candidates (the chance level of any candidate-restricted prediction).

    Also takes a torch bool mask.
    """
    sizes = mask.sum(1)
    sizes = np.asarray(sizes.cpu() if hasattr(sizes, "cpu") else sizes, dtype=np.float64)
    return _mean(1.0 / sizes[sizes > 0])


def covering_rate(pred: np.ndarray, mask: np.ndarray) -> float:
    """Share of rows with candidates whose (unrestricted) prediction lies in their candidate set."""
    pred, mask = np.asarray(pred), np.asarray(mask, dtype=bool)
    has = mask.any(axis=1)
    return _mean(mask[np.flatnonzero(has), pred[has]])


def confusion_matrix(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class; ``y == -1`` rows are left out."""
    pred, y = np.asarray(pred), np.asarray(y)
    keep = y >= 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y[keep], pred[keep]), 1)
    return cm


def per_class_metrics(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1, support (true rows) and predicted count, each (C,).

    Precision is ``nan`` for a class never predicted, recall ``nan`` for a class with no support;
    F1 is 0 when either is 0 or undefined while the other side has rows (a missed or spurious
    class), and ``nan`` only when the class neither occurs nor is predicted.
    """
    pred, y = np.asarray(pred), np.asarray(y)
    tp = np.bincount(pred[pred == y], minlength=num_classes)[:num_classes].astype(np.float64)
    predicted = np.bincount(pred, minlength=num_classes)[:num_classes].astype(np.float64)
    support = np.bincount(y[y >= 0], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(predicted + support > 0, 2 * tp / (predicted + support), np.nan)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    }


def macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes that occur in ``y`` or in ``pred`` (scikit-learn's default labels)."""
    f1 = per_class_metrics(pred, y, num_classes)["f1"]
    f1 = f1[~np.isnan(f1)]
    return _mean(f1)


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width confidence bins ``(k/n, (k+1)/n]`` (bin 0 also takes 0): counts, mean confidence, accuracy.

    Empty bins have ``nan`` mean confidence and accuracy.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        acc = np.bincount(idx, weights=corr, minlength=n_bins) / counts
    return counts, mean_conf, acc


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): sum over bins of ``|bin| / N * |accuracy(bin) - confidence(bin)|``."""
    counts, mean_conf, acc = calibration_bins(confidence, correct, n_bins)
    n = counts.sum()
    if n == 0:
        return math.nan
    used = counts > 0
    return float(np.sum(counts[used] / n * np.abs(acc[used] - mean_conf[used])))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the ``positive`` rows against the rest: the chance
    that a random positive scores above a random negative, ties counting half (the Mann-Whitney U
    statistic from average ranks); None without both kinds of rows."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ordered = np.sort(scores)
    # 1-based ranks, ties sharing their average: the mean of a tie's first and last position
    ranks = (np.searchsorted(ordered, scores, "left") + np.searchsorted(ordered, scores, "right") + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def none_of_these(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) the classifier's probability mass outside each row's known candidates (``mask`` (N, C)):
    its belief that the row's message is none of them; NaN on rows without known candidates."""
    inside = (np.asarray(probs, dtype=np.float64) * mask).sum(1)
    return np.where(mask.any(1), np.clip(1.0 - inside, 0.0, 1.0), np.nan)


ABSTAIN_FALSE_RATE = 0.05  # the share of rows that hold their truth which --abstain may answer "none"


def abstain_threshold(probs: np.ndarray, mask: np.ndarray, rate: float = ABSTAIN_FALSE_RATE) -> dict | None:
    """``predict --abstain``'s threshold on ``none_of_these``, from validation rows whose candidates
    hold their truth (``mask`` (N, C) their known candidates): the ``1 - rate`` quantile of their
    scores, so about ``rate`` of such rows would be answered "none". None without rows."""
    score = none_of_these(probs, mask)
    score = score[np.isfinite(score)]
    if not len(score):
        return None
    threshold = float(np.quantile(score, 1.0 - rate))
    return {"threshold": threshold, "false_abstain": rate, "rows": int(len(score))}


def classification_metrics(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, n_bins: int = ECE_BINS
) -> dict:
    """Every summary metric of ``plcli evaluate`` on arrays; ``y == -2`` marks rows without a truth.

    Accuracy, macro-F1 and ECE use the rows with a truth; within-candidate accuracy the rows with a
    truth and candidates; the covering rate every row with candidates (it needs no truth).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    y = np.asarray(y, dtype=np.int64)
    mask = np.zeros((n, c), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    lab = y != -2
    has = mask.any(axis=1)
    yl, pl = y[lab], pred[lab]
    return {
        "rows": int(n),
        "labelled_rows": int(lab.sum()),
        "candidate_rows": int(has.sum()),
        "labelled_candidate_rows": int((lab & has).sum()),
        "unknown_labels": int((yl == -1).sum()),
        "accuracy": accuracy(pl, yl),
        "accuracy_within_candidates": within_candidate_accuracy(probs[lab], yl, mask[lab]),
        "macro_f1": macro_f1(pl, yl, c),
        "covering_rate": covering_rate(pred, mask),
        "ece": expected_calibration_error(conf[lab], pl == yl, n_bins),
        "ece_bins": n_bins,
        "mean_candidates": _mean(mask[has].sum(axis=1)),
        "chance": 1.0 / c,
    }
