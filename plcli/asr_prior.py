"""A speech recogniser's view of each training row's candidates as a prior on the targets.

The recogniser (``plcli.recognisers``) needs no training, so every exact row is a fair test of it.
Its view becomes a distribution over each row's candidates, calibrated on the exact rows, and
Bayes' rule multiplies it into a model's candidate probabilities: in log space, a per-candidate
bonus that ``prior_bonus`` builds and the stages add wherever a model's candidate-restricted
distribution becomes a target (finetune's PRODEN targets, the distill rounds' teacher targets, the
CTC phase's texts and the refit's ranking). The prior changes nothing at prediction time; there the
cascade (``plcli.cascade``) may ask the recogniser again.

- A single vote (pocketsphinx, which decodes a grammar of the candidates) is one annotator with
  symmetric noise (the single-annotator case of Dawid and Skene 1979): right with probability
  ``a``, so the named candidate has probability ``a`` and each of the other ``K - 1`` gets
  ``(1 - a) / (K - 1)``. ``a`` is estimated on the exact rows as ``(hits + 1) / (n + 2)``, 0.5
  without any; a vote no better than chance (``a <= 1 / K``) adds nothing.
- Scores (Whisper's forced log-likelihood ``s`` of each candidate, ``n`` tokens) become
  ``softmax(s / n**alpha / T)`` over the candidates; the length normalisation ``alpha`` and the
  temperature ``T`` (temperature scaling, Guo et al. 2017) are the pair with the smallest negative
  log-likelihood of the exact rows' labels (``fit_calibration``), 0 and 1 without exact rows.

How often the distribution's top candidate is right on the exact rows, and its expected
calibration error there, go into the stage's ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from plcli.errors import UserError
from plcli.recognisers import CHOICES, KINDS, Scores, grammar_votes, recognise, resolve

__all__ = ["CHOICES", "grammar_votes", "resolve", "prior_for", "distribution", "fit_calibration"]
PRIORS = KINDS
ALPHAS = (0.0, 0.5, 1.0)  # length normalisations tried: none, square root, per token
TEMPERATURES = tuple(float(t) for t in np.logspace(-1, 2, 31))


def vote_accuracy(rows: Sequence, votes: np.ndarray, normalizer: Callable[[str], str]) -> tuple[int, int]:
    """(hits, n) over the exact rows with candidates that include their label: how often the vote
    names the label (a row without a vote counts as a miss)."""
    hits = n = 0
    for r, j in zip(rows, votes, strict=True):
        if r.label is None or not r.candidates:
            continue
        keys = [normalizer(c) for c in r.candidates]
        if normalizer(r.label) not in keys:
            continue
        n += 1
        hits += int(j >= 0 and keys[j] == normalizer(r.label))
    return hits, n


def smoothed_accuracy(hits: int, n: int) -> float:
    """``(hits + 1) / (n + 2)``: Laplace's rule; 0.5 with no evidence."""
    if not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits} and {n}")
    return (hits + 1) / (n + 2)


def vote_bonus(accuracy: float, k: int) -> float:
    """``log(a (K - 1) / (1 - a))`` for a vote among ``k`` candidates, 0 when it is no better than
    chance (``a <= 1 / k``) or there is nothing to choose (``k < 2``)."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    if k < 2 or accuracy <= 1.0 / k:
        return 0.0
    a = min(accuracy, 0.999)
    return math.log(a * (k - 1) / (1 - a))


def bonus_matrix(rows: Sequence, votes: np.ndarray, vocab, accuracy: float) -> np.ndarray:
    """(N, C) float32 log-likelihood bonus of each row's voted class, ``vote_bonus(accuracy, K)``
    with ``K`` the row's distinct candidate texts (by ``vocab``'s normaliser), 0 elsewhere; a vote
    for a text outside ``vocab`` adds nothing (renormalisation cancels it). See ``prior_bonus``."""
    if len(votes) != len(rows):
        raise ValueError(f"{len(votes)} votes for {len(rows)} rows")
    for r, j in zip(rows, votes, strict=True):
        if j >= 0 and j >= len(r.candidates):
            raise ValueError(f"row {r.id}: vote {j} outside its {len(r.candidates)} candidates")
    k = [len({vocab.normalizer(c) for c in r.candidates}) for r in rows]
    width = max([1, *(len(r.candidates) for r in rows)])
    logp = distribution(Scores("vote", np.asarray(votes)), k, width, accuracy=accuracy)
    return prior_bonus(rows, logp, vocab)


def truth_index(rows: Sequence, normalizer: Callable[[str], str]) -> np.ndarray:
    """(N,) position of each exact row's label among its candidates; -1 elsewhere."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        if r.label is not None and r.candidates:
            keys = [normalizer(c) for c in r.candidates]
            out[i] = keys.index(normalizer(r.label)) if normalizer(r.label) in keys else -1
    return out


def log_softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, K) with ``-inf`` padding; rows that are all padding stay ``-inf``."""
    m = np.max(z, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return z - m - np.log(np.clip(np.exp(z - m).sum(1, keepdims=True), 1e-300, None))


def normalised(scores: Scores, alpha: float) -> np.ndarray:
    """(N, K) ``logp / tokens**alpha`` (``-inf`` where unscored)."""
    return np.where(np.isfinite(scores.logp), scores.logp / np.maximum(scores.tokens, 1) ** alpha, -np.inf)


def fit_calibration(scores: Scores, truth: np.ndarray) -> dict:
    """The (``alpha``, ``temperature``) whose ``softmax(logp / tokens**alpha / T)`` gives the exact
    rows' labels (``truth``: (N,) candidate positions, -1 elsewhere) the smallest mean negative
    log-likelihood; alpha 0 and T 1 without such rows."""
    rows = (truth >= 0) & np.isfinite(scores.logp).any(1)
    if not rows.any():
        return {"alpha": 0.0, "temperature": 1.0, "fitted_on": 0}
    best = None
    for alpha in ALPHAS:
        z = normalised(scores, alpha)[rows]
        for t in TEMPERATURES:
            nll = -float(np.mean(log_softmax_rows(z / t)[np.arange(len(z)), truth[rows]]))
            if best is None or nll < best["nll"] - 1e-12:
                best = {"alpha": alpha, "temperature": t, "nll": nll}
    return {**best, "fitted_on": int(rows.sum())}


def distribution(scores: Scores, k: Sequence[int], width: int, accuracy: float | None = None,
                 calibration: dict | None = None) -> np.ndarray:
    """(N, width) log-probability of each row's candidates (``k``: (N,) distinct candidate counts),
    0 everywhere on a row the recogniser says nothing about. A vote: ``accuracy`` at the named
    candidate; scores: ``calibration`` (``fit_calibration``)."""
    if scores.logp is not None:
        z = normalised(scores, calibration["alpha"]) / calibration["temperature"]
        out = log_softmax_rows(z)
        return np.where(np.isfinite(scores.logp).any(1, keepdims=True), out, 0.0)
    out = np.zeros((len(scores.votes), width))
    for i, (j, n) in enumerate(zip(scores.votes, k, strict=True)):
        bonus = vote_bonus(accuracy, int(n)) if j >= 0 else 0.0
        if bonus:
            out[i] = math.log((1 - min(accuracy, 0.999)) / (n - 1))
            out[i, j] += bonus
    return out


def calibration_error(logp: np.ndarray, truth: np.ndarray, bins: int = 10) -> float | None:
    """Expected calibration error of the top candidate's probability on rows with a ``truth``."""
    rows = (truth >= 0) & np.isfinite(logp).any(1)
    if not rows.any():
        return None
    p = np.exp(logp[rows])
    conf, hit = p.max(1), (p.argmax(1) == truth[rows]).astype(float)
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(conf[edges == b].mean() - hit[edges == b].mean()) * (edges == b).mean()
                     for b in range(bins) if (edges == b).any()))


def prior_bonus(rows: Sequence, logp: np.ndarray, vocab) -> np.ndarray:
    """(N, C) float32: each row's candidate log-probabilities (``distribution``) at their classes,
    less the row's smallest, 0 off the candidates. Add it to a model's logits before restricting
    them to the candidates (``plcli.losses.candidate_targets``): constants per row cancel there,
    and a candidate outside ``vocab`` adds nothing to the known classes."""
    out = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, r in enumerate(rows):
        if not r.candidates:
            continue
        lp = logp[i, : len(r.candidates)]
        if not np.isfinite(lp).all() or not np.ptp(lp):
            continue
        for j, cls in enumerate(map(vocab.index, r.candidates)):
            if cls is not None:
                out[i, cls] = max(out[i, cls], lp[j] - lp.min())
    return out


def prior_for(rows: Sequence, vocab, kind: str, cache: Path, accuracy: float | None = None, workers: int = 2,
              log: Callable = print, model: str = "base", language: str = "en",
              window: float = 30.0) -> tuple[np.ndarray | None, dict]:
    """The (N, C) bonus of ``kind`` ("none": None) and what it rests on, for ``metrics.json``:
    the recogniser's accuracy on the exact rows, the calibration used and its error there."""
    if kind not in PRIORS:
        raise UserError(f"unknown recogniser {kind!r}: one of {', '.join(PRIORS)}")
    if kind == "none":
        return None, {"kind": "none"}
    scores = recognise(rows, kind, cache, model, language, workers, log, window)
    truth = truth_index(rows, vocab.normalizer)
    k = [len({vocab.normalizer(c) for c in r.candidates}) for r in rows]
    width = max([1, *(len(r.candidates) for r in rows)])
    hits, n = vote_accuracy(rows, scores.votes, vocab.normalizer)
    info = {"kind": kind, "exact_rows": n, "exact_hits": hits, "rows_voted": int((scores.votes >= 0).sum())}
    if scores.logp is None:
        a = smoothed_accuracy(hits, n) if accuracy is None else float(accuracy)
        info.update(accuracy=a, accuracy_source="estimated" if accuracy is None else "given")
        logp = distribution(scores, k, width, accuracy=a)
        log(f"asr prior: the vote names the label of {hits} of {n} exact rows with candidates; "
            f"accuracy {a:.2f} ({info['accuracy_source']}), bonus {vote_bonus(a, 10):.2f} nats at "
            "10 candidates")
    else:
        cal = fit_calibration(scores, truth)
        logp = distribution(scores, k, width, calibration=cal)
        info.update(accuracy=smoothed_accuracy(hits, n), calibration=cal)
        log(
            f"asr prior: {kind} ranks the label first on {hits} of {n} exact rows with candidates; "
            f"length norm {cal['alpha']}, temperature {cal['temperature']:.3g} (fitted on {cal['fitted_on']})"
        )
    info["calibration_error"] = calibration_error(logp, truth)
    return prior_bonus(rows, logp, vocab), info
